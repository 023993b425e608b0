"""The connection state machine. Pure: every method takes ``now``.

The manager feeds it what it observed (a probe or a dial that succeeded or
failed, whether the server still answers a TCP dial) and acts on what it
returns: a transition to announce, a re-dial to request.

Hysteresis (issue #18): one failed probe is a blip, not an outage, and every
"down" makes the controller rewrite every unfinished execution. Temporal is
called down only once probes have kept failing for ``down_after`` seconds,
from the start of the first failed probe to the end of a later one (so never
on one probe alone). Coming back up takes one good probe.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any

# Condition reasons for TemporalConnected (the values the rest of the operator
# sees), named once in agentexec.conditions and re-exported here.
from agentexec.conditions import CIRCUIT_OPEN as CIRCUIT_OPEN
from agentexec.conditions import CONNECTED as CONNECTED
from agentexec.conditions import NAMESPACE_NOT_FOUND as NAMESPACE_NOT_FOUND
from agentexec.conditions import TEMPORAL_UNAVAILABLE as TEMPORAL_UNAVAILABLE


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
    reason: str
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
    # Seconds of failing probes before "down"; 0: the first failed probe.
    down_after: float = 0.0

    connected: bool = False
    since: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    dial_attempts: int = 0
    consecutive_dial_failures: int = 0
    ever_connected: bool = False
    # The server answers, but our namespace does not exist (yet): not
    # connected, and nothing a re-dial could fix.
    namespace_missing: bool = False
    # When the first probe of the current run of failures was sent.
    failing_since: float | None = None
    # Failed probes on the current client, and re-dials that brought no good
    # probe: each such re-dial doubles the failures the next one waits for.
    failures_since_dial: int = 0
    fruitless_redials: int = 0
    _uptime: float = 0.0
    _downtime: float = 0.0
    _started: float | None = None

    def start(self, now: float) -> None:
        self._started = self.since = now

    @property
    def circuit_open(self) -> bool:
        return self.consecutive_dial_failures >= self.circuit_threshold

    @property
    def failing(self) -> bool:
        """Probes fail, and the state has not (yet) followed."""
        return self.connected and self.consecutive_failures > 0

    @property
    def reason(self) -> str:
        """The TemporalConnected condition reason for the current state."""
        if self.connected:
            return CONNECTED
        if self.namespace_missing:
            return NAMESPACE_NOT_FOUND
        return CIRCUIT_OPEN if self.circuit_open else TEMPORAL_UNAVAILABLE

    def dial_started(self) -> None:
        self.dial_attempts += 1

    def dial_succeeded(self, now: float) -> Flip | None:
        """A new client. Not "connected" yet: only a probe of our namespace says so."""
        self.consecutive_dial_failures = 0
        if self.failures_since_dial:
            self.fruitless_redials += 1  # until a probe succeeds on this client
        self.failures_since_dial = 0
        return None

    def dial_failed(self, now: float, error: str, replacing: bool = False) -> Flip | None:
        """A failed dial; while ``replacing`` a client the probe decides the state."""
        self.consecutive_dial_failures += 1
        self.last_error = error
        if replacing:
            return None
        self.namespace_missing = False
        return self._down(now)

    def probe_succeeded(self, now: float) -> Flip | None:
        self.namespace_missing = False
        return self._up(now)

    def namespace_not_found(self, now: float, error: str) -> Flip | None:
        """The server answered that our namespace does not exist.

        The connection works, so this counts toward no re-dial; the probe
        keeps asking and :meth:`probe_succeeded` connects once it exists.
        """
        self.consecutive_failures = self.failures_since_dial = 0
        self.failing_since = None
        self.namespace_missing = True
        self.last_error = error
        return self._down(now)

    def probe_failed(self, now: float, error: str, started: float | None = None) -> Flip | None:
        """Record a failed probe, sent at ``started``; return the transition, if any.

        Down only once failures span ``down_after`` (see the module docstring).
        """
        self.consecutive_failures += 1
        self.failures_since_dial += 1
        if self.failing_since is None:
            self.failing_since = now if started is None else min(started, now)
        self.namespace_missing = False
        self.last_error = error
        return self._down(now) if self.outage_confirmed(now) else None

    @property
    def redial_due(self) -> bool:
        """Enough failed probes in a row on this client that, if the server
        still answers a TCP dial, the client itself is broken and is re-dialled.

        A server that refuses TCP is down: the SDK's client reconnects by
        itself once it is back. The TCP dial is the caller's to make, and only
        when this says it matters (against dropped packets it takes a probe
        timeout, which would slow every failed probe). A re-dial whose new
        client fails the same way says the server, not the client, is at
        fault (a draining frontend answers NOT_SERVING for seconds): each one
        doubles the failures the next waits for, so they never storm.
        """
        needed = self.redial_after_failures << min(self.fruitless_redials, 6)
        return self.failures_since_dial >= needed

    def outage_confirmed(self, now: float) -> bool:
        """Whether the current run of failed probes is long enough to call Temporal down."""
        if self.failing_since is None:
            return False
        if self.down_after <= 0:
            return True
        return self.consecutive_failures >= 2 and now - self.failing_since >= self.down_after

    def snapshot(self, now: float) -> ConnectionState:
        up, down = self._uptime, self._downtime
        if self.since is not None:
            if self.connected:
                up += now - self.since
            else:
                down += now - self.since
        return ConnectionState(
            connected=self.connected,
            reason=self.reason,
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
        self.consecutive_failures = self.failures_since_dial = self.fruitless_redials = 0
        self.failing_since = None
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
