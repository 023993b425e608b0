"""The connection state machine. Pure: every method takes ``now``.

The manager feeds it what it observed (a probe or a dial that succeeded or
failed, whether the server still answers a TCP dial) and acts on what it
returns: a transition to announce, a re-dial to request.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class Transition(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class Flip:
    """A transition, with the length of the spell it ended."""

    to: Transition
    ended_spell: float


@dataclass(frozen=True)
class ConnectionState:
    """A snapshot: what /statusz shows and conditions are computed from."""

    connected: bool
    since: float | None
    last_error: str | None
    consecutive_failures: int
    dial_attempts: int
    consecutive_dial_failures: int
    circuit_open: bool
    uptime_seconds: float
    downtime_seconds: float
    ever_connected: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ConnectionTracker:
    circuit_threshold: int = 10
    redial_after_failures: int = 5

    connected: bool = False
    since: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    dial_attempts: int = 0
    consecutive_dial_failures: int = 0
    ever_connected: bool = False
    _uptime: float = 0.0
    _downtime: float = 0.0
    _started: float | None = None

    def start(self, now: float) -> None:
        self._started = self.since = now

    @property
    def circuit_open(self) -> bool:
        return self.consecutive_dial_failures >= self.circuit_threshold

    def dial_started(self) -> None:
        self.dial_attempts += 1

    def dial_succeeded(self, now: float) -> Flip | None:
        self.consecutive_dial_failures = 0
        return self._up(now)

    def dial_failed(self, now: float, error: str, replacing: bool = False) -> Flip | None:
        """A failed dial; while ``replacing`` a client the probe decides the state."""
        self.consecutive_dial_failures += 1
        self.last_error = error
        return None if replacing else self._down(now)

    def probe_succeeded(self, now: float) -> Flip | None:
        return self._up(now)

    def probe_failed(self, now: float, error: str, reachable: bool) -> tuple[Flip | None, bool]:
        """Record a failed probe; return (transition, whether to re-dial).

        A server that refuses TCP is down: the SDK's client reconnects by
        itself once it is back, so only a server that answers TCP while our
        client keeps failing means the client itself is broken.
        """
        self.consecutive_failures += 1
        self.last_error = error
        transition = self._down(now)
        redial = reachable and self.consecutive_failures >= self.redial_after_failures
        return transition, redial

    def snapshot(self, now: float) -> ConnectionState:
        up, down = self._uptime, self._downtime
        if self.since is not None:
            if self.connected:
                up += now - self.since
            else:
                down += now - self.since
        return ConnectionState(
            connected=self.connected,
            since=self.since,
            last_error=self.last_error,
            consecutive_failures=self.consecutive_failures,
            dial_attempts=self.dial_attempts,
            consecutive_dial_failures=self.consecutive_dial_failures,
            circuit_open=self.circuit_open,
            uptime_seconds=up,
            downtime_seconds=down,
            ever_connected=self.ever_connected,
        )

    def _up(self, now: float) -> Flip | None:
        self.consecutive_failures = 0
        if self.connected:
            return None
        spell = self._close_spell(now)
        self.connected = self.ever_connected = True
        self.last_error = None
        return Flip(Transition.CONNECTED, spell)

    def _down(self, now: float) -> Flip | None:
        if not self.connected:
            return None
        spell = self._close_spell(now)
        self.connected = False
        return Flip(Transition.DISCONNECTED, spell)

    def _close_spell(self, now: float) -> float:
        spell = max(0.0, now - self.since) if self.since is not None else 0.0
        if self.connected:
            self._uptime += spell
        else:
            self._downtime += spell
        self.since = now
        return spell
