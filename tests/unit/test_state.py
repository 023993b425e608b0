from __future__ import annotations

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
    flip, redial = t.probe_failed(11.0, "unavailable", reachable=False)
    assert flip is not None
    assert flip.to is Transition.DISCONNECTED
    assert flip.ended_spell == 10.0
    again, _ = t.probe_failed(12.0, "unavailable", reachable=False)
    assert again is None
    assert not redial


def test_redial_only_when_the_server_answers_tcp_and_the_client_keeps_failing() -> None:
    t = tracker()
    connect(t, 1.0)
    refusing = [t.probe_failed(float(n), "x", reachable=False)[1] for n in range(2, 6)]
    assert refusing == [False] * 4  # down: the SDK client reconnects by itself
    t2 = tracker()
    connect(t2, 1.0)
    _, first = t2.probe_failed(2.0, "x", reachable=True)
    _, second = t2.probe_failed(3.0, "x", reachable=True)
    assert (first, second) == (False, True)


def test_probe_success_reconnects_and_resets_failures() -> None:
    t = tracker()
    connect(t, 1.0)
    t.probe_failed(2.0, "x", reachable=False)
    flip = t.probe_succeeded(7.0)
    assert flip is not None
    assert flip.to is Transition.CONNECTED
    assert flip.ended_spell == 5.0
    assert t.consecutive_failures == 0
    assert t.probe_succeeded(8.0) is None


def test_uptime_and_downtime_add_up() -> None:
    t = tracker()
    connect(t, 10.0)  # 10 s down
    t.probe_failed(40.0, "x", reachable=False)  # 30 s up
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
    # A server that answers TCP and fails the probe once is not a broken client.
    _, redial = t.probe_failed(11.0, "x", reachable=True)
    assert not redial
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
