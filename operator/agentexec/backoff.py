"""The one backoff policy: exponential, capped, jittered. Pure.

Every retry loop of the project takes its delays from here (the work queue's
per-key backoff, the manager's re-dials and worker restarts, the background
loops, the runner), each with its own named constants below, so "double it up
to a cap, add jitter" is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Backoff:
    """``base``, ``2·base``, ``4·base`` ... up to ``cap`` seconds, each ± ``jitter``.

    Jitter spreads a delay over ``±jitter`` of its nominal value, so replicas
    and keys that failed together do not retry in lockstep.
    """

    base: float = 1.0
    cap: float = 30.0
    jitter: float = 0.2

    def nominal(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1-based), without jitter."""
        # Exponent bounded so huge attempt counts cannot overflow a float.
        return min(self.cap, self.base * 2.0 ** min(max(attempt - 1, 0), 62))

    def delay(self, attempt: int, rnd: float) -> float:
        """The delay with jitter; ``rnd`` is uniform in [0, 1) (``random.random()``)."""
        return max(0.0, self.nominal(attempt) * (1.0 + self.jitter * (2.0 * rnd - 1.0)))

    def capped(self, cap: float) -> Backoff:
        """The same policy with another ceiling (an open circuit's longer one)."""
        return replace(self, cap=cap)


# Per-key reconcile retries (client-go's default item rate limiter: 5 ms to
# 1000 s; ours starts higher and stops at a minute, since a key that fails is
# usually waiting for Temporal or the API server).
RECONCILE = Backoff(base=0.1, cap=60.0)
# Re-dials of Temporal: 1, 2, 4, 8, 16, then 30 s (the reference system's);
# an open circuit raises the ceiling to 5 min (settings override both).
REDIAL = Backoff(base=1.0, cap=30.0)
REDIAL_CIRCUIT_CAP = 300.0
# A worker whose run() ended is rebuilt after 1, 2, 4, 8, then 10 s.
WORKER_RESTART = Backoff(base=1.0, cap=10.0, jitter=0.0)
# A background loop (sweep, connection trigger, ...) that raised.
LOOP = Backoff(base=1.0, cap=30.0)
# A start Temporal refuses (permission denied, invalid argument, rate limited)
# is retried on the RECONCILE backoff this many times in a row, about three
# minutes, before the execution fails with StartRejected (the queue TTL ends
# it sooner when shorter).
START_REFUSED_BUDGET = 12
# Attempts of an agent that failed (each spends one of spec.backoffLimit): a
# Job re-creates its pods 10 s, 20 s, 40 s ... apart; an agent's failures are
# mostly quick, so ours start at a second. A runner's next_retry_delay wins.
AGENT_ATTEMPT = Backoff(base=1.0, cap=30.0)
# A model request re-sent inside an attempt (a stall, a 5xx, a refused
# connection) when the provider named no Retry-After.
PROVIDER_RESEND = Backoff(base=1.0, cap=60.0)
# How often a waiting attempt looks for runners on its queue: first after
# AGENTEXEC_NO_RUNNER_SECONDS, then twice as long each time up to ten minutes
# (each look is an activity in the workflow's history).
RUNNER_CHECK_CAP = 600.0
