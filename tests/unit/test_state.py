from __future__ import annotations

import pytest

from agentexec.temporal.state import ConnectionTracker, Transition


def tracker() -> ConnectionTracker:
    t = ConnectionTracker(circuit_threshold=3, redial_after_failures=2)
    t.start(0.0)
    return t


def connect(t: ConnectionTracker, now: float) -> None:
    t.dial_succeeded(now)
    t.probe_succeeded(now)


def test_a_dial_alone_does_not_connect_the_probe_of_the_namespace_does() -> None:
    t = tracker()
    t.dial_started()
    assert t.dial_succeeded(5.0) is None
    assert not t.connected
    assert t.reason == "TemporalUnavailable"
    flip = t.probe_succeeded(5.0)
    assert flip is not None
    assert flip.to is Transition.CONNECTED
    assert flip.ended_spell == 5.0
    assert t.connected
    assert t.ever_connected
    assert t.last_error is None
    assert t.reason == "Connected"


def test_failed_dials_open_the_circuit_and_a_success_closes_it() -> None:
    t = tracker()
    for n in range(3):
        assert t.dial_failed(float(n), "refused") is None  # already disconnected
        assert t.circuit_open is (n == 2)
    assert t.last_error == "refused"
    connect(t, 4.0)
    assert not t.circuit_open
    assert t.consecutive_dial_failures == 0


def test_a_failed_replacement_dial_leaves_the_state_to_the_probe() -> None:
    t = tracker()
    connect(t, 1.0)
    assert t.dial_failed(2.0, "tls", replacing=True) is None
    assert t.connected


def test_probe_failure_disconnects_once() -> None:
    t = tracker()
    connect(t, 1.0)
    flip = t.probe_failed(11.0, "unavailable")
    assert flip is not None
    assert flip.to is Transition.DISCONNECTED
    assert flip.ended_spell == 10.0
    assert t.probe_failed(12.0, "unavailable") is None


def test_a_redial_is_due_after_enough_failed_probes_in_a_row() -> None:
    t = tracker()  # redial_after_failures=2
    connect(t, 1.0)
    t.probe_failed(2.0, "x")
    assert not t.redial_due
    t.probe_failed(3.0, "x")
    assert t.redial_due  # the caller then asks whether the server answers TCP
    t.probe_succeeded(4.0)
    assert not t.redial_due


def test_probe_success_reconnects_and_resets_failures() -> None:
    t = tracker()
    connect(t, 1.0)
    t.probe_failed(2.0, "x")
    flip = t.probe_succeeded(7.0)
    assert flip is not None
    assert flip.to is Transition.CONNECTED
    assert flip.ended_spell == 5.0
    assert t.consecutive_failures == 0
    assert t.probe_succeeded(8.0) is None


def test_uptime_and_downtime_add_up() -> None:
    t = tracker()
    connect(t, 10.0)  # 10 s down
    t.probe_failed(40.0, "x")  # 30 s up
    t.probe_succeeded(45.0)  # 5 s down
    snap = t.snapshot(50.0)  # 5 s up so far
    assert snap.uptime_seconds == 35.0
    assert snap.downtime_seconds == 15.0
    assert snap.connected
    assert snap.since == 45.0


def test_a_missing_namespace_is_its_own_reason_and_never_asks_for_a_redial() -> None:
    t = tracker()
    t.dial_succeeded(1.0)
    assert t.namespace_not_found(2.0, "namespace x not found") is None  # was never up
    assert t.reason == "NamespaceNotFound"
    assert t.last_error == "namespace x not found"
    for n in range(3, 10):
        t.namespace_not_found(float(n), "namespace x not found")
    assert t.consecutive_failures == 0
    # A server that fails the probe once is not a broken client.
    t.probe_failed(11.0, "x")
    assert not t.redial_due
    assert t.reason == "TemporalUnavailable"  # down: the namespace is unknown again


def test_the_namespace_appearing_connects() -> None:
    t = tracker()
    connect(t, 1.0)
    flip = t.namespace_not_found(3.0, "gone")
    assert flip is not None
    assert flip.to is Transition.DISCONNECTED
    flip = t.probe_succeeded(4.0)
    assert flip is not None
    assert flip.to is Transition.CONNECTED
    assert t.reason == "Connected"
    assert not t.namespace_missing


def test_the_circuit_reason_wins_over_unavailable() -> None:
    t = tracker()
    for n in range(3):
        t.dial_failed(float(n), "refused")
    assert t.reason == "CircuitOpen"
    assert t.snapshot(4.0).reason == "CircuitOpen"


# One probe: ("ok", at) or ("fail", sent at, failed at).
Probe = tuple[str, float] | tuple[str, float, float]


def run_probes(down_after: float, probes: list[Probe]) -> list[bool]:
    """Connected at 0; what `connected` is after each probe."""
    t = ConnectionTracker(down_after=down_after)
    t.start(0.0)
    connect(t, 0.0)
    seen = []
    for probe in probes:
        if probe[0] == "ok":
            t.probe_succeeded(probe[1])
        else:
            t.probe_failed(probe[-1], "x", started=probe[1])
        seen.append(t.connected)
    return seen


@pytest.mark.parametrize(
    ("case", "down_after", "probes", "connected"),
    [
        ("0 s: the first failed probe flips (no hysteresis)",
         0.0, [("fail", 1.0, 1.0)], [False]),
        ("one failed probe never flips, however long it took",
         1.0, [("fail", 1.0, 3.0), ("ok", 3.1)], [True, True]),
        ("failures shorter than the window: no flip",
         1.0, [("fail", 1.0, 1.0), ("fail", 1.1, 1.1), ("fail", 1.5, 1.5), ("ok", 1.6)],
         [True, True, True, True]),
        ("failures spanning the window: down, at the probe that closes it",
         1.0, [("fail", 1.0, 1.0), ("fail", 1.5, 1.5), ("fail", 2.0, 2.0)],
         [True, True, False]),
        ("the span counts from when the first failed probe was sent (a blackhole)",
         1.0, [("fail", 1.0, 2.0), ("fail", 2.1, 3.1)], [True, False]),
        ("a good probe ends the run: the window starts again",
         1.0, [("fail", 1.0, 1.0), ("ok", 1.5), ("fail", 1.9, 1.9), ("fail", 2.5, 2.5),
               ("fail", 2.9, 2.9)],
         [True, True, True, True, False]),
        ("recovery is one good probe",
         1.0, [("fail", 1.0, 1.0), ("fail", 2.0, 2.0), ("ok", 2.1)], [True, False, True]),
    ],
)  # fmt: skip
def test_hysteresis(
    case: str, down_after: float, probes: list[Probe], connected: list[bool]
) -> None:
    assert run_probes(down_after, probes) == connected, case


def test_while_failing_inside_the_window_the_state_says_so_and_stays_connected() -> None:
    t = ConnectionTracker(down_after=1.0, redial_after_failures=2)
    t.start(0.0)
    connect(t, 0.0)
    assert t.probe_failed(1.0, "refused", started=1.0) is None
    assert not t.redial_due
    assert t.failing
    assert t.connected
    assert t.reason == "Connected"
    assert t.last_error == "refused"
    # The re-dial count is about failed probes, not the window.
    assert t.probe_failed(1.1, "refused", started=1.1) is None
    assert t.redial_due
    flip = t.probe_failed(2.0, "refused", started=2.0)
    assert flip is not None
    assert flip.to is Transition.DISCONNECTED
    assert flip.ended_spell == 2.0  # the connected spell ends when it is called down
    assert not t.failing


def test_a_missing_namespace_is_an_answer_and_flips_at_once() -> None:
    t = ConnectionTracker(down_after=1.0)
    t.start(0.0)
    connect(t, 0.0)
    t.probe_failed(1.0, "x", started=1.0)
    flip = t.namespace_not_found(1.1, "namespace gone")
    assert flip is not None
    assert flip.to is Transition.DISCONNECTED
    assert t.failing_since is None


def test_redials_that_do_not_help_double_the_failures_the_next_one_waits_for() -> None:
    # A draining frontend answers NOT_SERVING to every client: a re-dial after
    # every failed probe on each new client would storm.
    t = tracker()  # redial_after_failures=2
    connect(t, 0.0)
    due_after = []
    for _ in range(4):
        failures = 0
        while not t.redial_due:
            t.probe_failed(1.0, "NOT_SERVING")
            failures += 1
        due_after.append(failures)
        t.dial_succeeded(1.0)  # the re-dial; the new client fails the same way
    assert due_after == [2, 4, 8, 16]
    t.probe_succeeded(2.0)  # the server is fine again: back to the plain count
    t.probe_failed(3.0, "x")
    t.probe_failed(3.1, "x")
    assert t.redial_due
