from __future__ import annotations

from agentexec.temporal.state import ConnectionTracker, Transition


def tracker() -> ConnectionTracker:
    t = ConnectionTracker(circuit_threshold=3, redial_after_failures=2)
    t.start(0.0)
    return t


def test_first_successful_dial_connects() -> None:
    t = tracker()
    t.dial_started()
    flip = t.dial_succeeded(5.0)
    assert flip is not None
    assert flip.to is Transition.CONNECTED
    assert flip.ended_spell == 5.0
    assert t.connected
    assert t.ever_connected
    assert t.last_error is None


def test_failed_dials_open_the_circuit_and_a_success_closes_it() -> None:
    t = tracker()
    for n in range(3):
        assert t.dial_failed(float(n), "refused") is None  # already disconnected
        assert t.circuit_open is (n == 2)
    assert t.last_error == "refused"
    t.dial_succeeded(4.0)
    assert not t.circuit_open
    assert t.consecutive_dial_failures == 0


def test_a_failed_replacement_dial_leaves_the_state_to_the_probe() -> None:
    t = tracker()
    t.dial_succeeded(1.0)
    assert t.dial_failed(2.0, "tls", replacing=True) is None
    assert t.connected


def test_probe_failure_disconnects_once() -> None:
    t = tracker()
    t.dial_succeeded(1.0)
    flip, redial = t.probe_failed(11.0, "unavailable", reachable=False)
    assert flip is not None
    assert flip.to is Transition.DISCONNECTED
    assert flip.ended_spell == 10.0
    again, _ = t.probe_failed(12.0, "unavailable", reachable=False)
    assert again is None
    assert not redial


def test_redial_only_when_the_server_answers_tcp_and_the_client_keeps_failing() -> None:
    t = tracker()
    t.dial_succeeded(1.0)
    refusing = [t.probe_failed(float(n), "x", reachable=False)[1] for n in range(2, 6)]
    assert refusing == [False] * 4  # down: the SDK client reconnects by itself
    t2 = tracker()
    t2.dial_succeeded(1.0)
    _, first = t2.probe_failed(2.0, "x", reachable=True)
    _, second = t2.probe_failed(3.0, "x", reachable=True)
    assert (first, second) == (False, True)


def test_probe_success_reconnects_and_resets_failures() -> None:
    t = tracker()
    t.dial_succeeded(1.0)
    t.probe_failed(2.0, "x", reachable=False)
    flip = t.probe_succeeded(7.0)
    assert flip is not None
    assert flip.to is Transition.CONNECTED
    assert flip.ended_spell == 5.0
    assert t.consecutive_failures == 0
    assert t.probe_succeeded(8.0) is None


def test_uptime_and_downtime_add_up() -> None:
    t = tracker()
    t.dial_succeeded(10.0)  # 10 s down
    t.probe_failed(40.0, "x", reachable=False)  # 30 s up
    t.probe_succeeded(45.0)  # 5 s down
    snap = t.snapshot(50.0)  # 5 s up so far
    assert snap.uptime_seconds == 35.0
    assert snap.downtime_seconds == 15.0
    assert snap.connected
    assert snap.since == 45.0
