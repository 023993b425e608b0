"""/healthz from several sources of supervised loops (http.liveness_of)."""

from __future__ import annotations

from agentexec.http import liveness_of


def test_alive_while_no_source_names_a_stopped_loop() -> None:
    assert liveness_of(list, list)() == (True, "ok")


def test_every_stopped_loop_of_every_source_is_named() -> None:
    alive = liveness_of(lambda: ["sweep"], list, lambda: ["leader-election"])
    assert alive() == (False, "stopped: sweep, leader-election")
