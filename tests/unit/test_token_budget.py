"""The runner's per-execution token budget (spec.limits.maxTokens), pure."""

from __future__ import annotations

import pytest

from agentexec.runner import BudgetExceeded, TokenBudget
from agentexec.temporal.types import Usage, usage_from


def test_no_limit_caps_nothing_and_never_stops() -> None:
    budget = TokenBudget()
    assert budget.cap(64) == 64
    assert budget.cap() is None
    budget.charge(Usage(10_000, 10_000, 20_000))
    assert budget.left is None


def test_calls_are_capped_at_what_is_left_and_usage_adds_up() -> None:
    budget = TokenBudget(100)
    assert budget.cap(64) == 64
    assert budget.cap() == 100  # a call that asks for nothing gets what is left
    budget.charge(Usage(30, 40, 70))
    assert budget.cap(64) == 30
    assert budget.used == Usage(30, 40, 70)
    budget.charge(Usage(20, 10, 0))  # a provider that leaves total out
    assert budget.used == Usage(50, 50, 100)
    assert budget.left == 0
    with pytest.raises(BudgetExceeded, match="before its next model call: 100 tokens used"):
        budget.cap(1)


def test_a_call_that_went_past_it_stops_the_agent_with_the_usage() -> None:
    budget = TokenBudget(50)
    with pytest.raises(BudgetExceeded) as stopped:
        budget.charge(Usage(45, 10, 55))
    assert stopped.value.usage == Usage(45, 10, 55)
    assert "spec.limits.maxTokens left 50 for this attempt" in str(stopped.value)


def test_usage_from_a_runner_s_json() -> None:
    assert usage_from({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}) == Usage(
        3, 2, 5
    )
    assert usage_from({"prompt_tokens": True, "extra": 1}) == Usage()
    assert usage_from(None) is None
