"""Re-dial delays: exponential, capped, jittered. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """1, 2, 4, 8, 16, then ``ceiling`` seconds; ``circuit_ceiling`` once the circuit is open."""

    base: float = 1.0
    ceiling: float = 30.0
    circuit_ceiling: float = 300.0
    jitter: float = 0.2

    def plan_delay(self, attempt: int, circuit_open: bool, rng: random.Random) -> float:
        """The wait before re-dial number ``attempt`` (1-based), jitter included.

        Jitter spreads the delay over ``±jitter`` of its nominal value, so many
        operator replicas do not dial a recovering server in lockstep.
        """
        return self.plan_nominal(attempt, circuit_open) * (
            1.0 + rng.uniform(-self.jitter, self.jitter)
        )

    def plan_nominal(self, attempt: int, circuit_open: bool) -> float:
        cap = self.circuit_ceiling if circuit_open else self.ceiling
        # Exponent bounded so huge attempt counts cannot overflow a float.
        return min(cap, self.base * 2.0 ** min(max(attempt - 1, 0), 62))
