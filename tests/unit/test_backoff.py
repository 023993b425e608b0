"""The one backoff policy (agentexec.backoff) and its named uses."""

from __future__ import annotations

import random

import pytest

from agentexec import backoff
from agentexec.backoff import Backoff

pytestmark = pytest.mark.unit


def test_redial_delays_are_the_reference_systems() -> None:
    policy = backoff.REDIAL
    assert [policy.nominal(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_an_open_circuit_raises_the_ceiling() -> None:
    open_ = backoff.REDIAL.capped(backoff.REDIAL_CIRCUIT_CAP)
    assert open_.nominal(10) == 300
    assert open_.nominal(7) == 64
    assert backoff.REDIAL.nominal(10) == 30


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert backoff.REDIAL.nominal(10_000) == 30
    assert backoff.RECONCILE.nominal(0) == pytest.approx(0.1)


def test_jitter_spreads_delays_within_bounds() -> None:
    policy = Backoff(base=1, cap=30, jitter=0.2)
    rng = random.Random(7)
    delays = [policy.delay(5, rng.random()) for _ in range(2000)]
    assert min(delays) >= 16 * 0.8
    assert max(delays) <= 16 * 1.2
    assert max(delays) - min(delays) > 16 * 0.3  # really spread, not constant


def test_jitter_bounds_are_exact_at_the_ends() -> None:
    policy = Backoff(base=1.0, cap=60, jitter=0.2)
    assert policy.delay(1, 0.0) == pytest.approx(0.8)
    assert policy.delay(1, 1.0) == pytest.approx(1.2)
    assert Backoff(base=0.1, cap=60, jitter=0).delay(30, 0.5) == 60


def test_worker_restarts_wait_at_most_ten_seconds() -> None:
    assert [backoff.WORKER_RESTART.nominal(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
