from __future__ import annotations

import random

import pytest

from agentexec.temporal.backoff import BackoffPolicy


def test_nominal_sequence_is_the_reference_one() -> None:
    policy = BackoffPolicy(base=1, ceiling=30, circuit_ceiling=300, jitter=0)
    assert [policy.plan_nominal(n, circuit_open=False) for n in range(1, 9)] == [
        1, 2, 4, 8, 16, 30, 30, 30,
    ]  # fmt: skip


def test_circuit_open_raises_the_ceiling_to_five_minutes() -> None:
    policy = BackoffPolicy()
    assert policy.plan_nominal(10, circuit_open=True) == 300
    assert policy.plan_nominal(7, circuit_open=True) == 64
    assert policy.plan_nominal(10, circuit_open=False) == 30


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert BackoffPolicy().plan_nominal(10_000, circuit_open=False) == 30


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 6, 50])
def test_jitter_stays_within_bounds(attempt: int) -> None:
    policy = BackoffPolicy(jitter=0.2)
    rng = random.Random(attempt)
    nominal = policy.plan_nominal(attempt, circuit_open=False)
    delays = [policy.plan_delay(attempt, False, rng) for _ in range(2000)]
    assert min(delays) >= nominal * 0.8
    assert max(delays) <= nominal * 1.2
    # Jitter really spreads the delays (replicas do not dial in lockstep).
    assert max(delays) - min(delays) > nominal * 0.3
