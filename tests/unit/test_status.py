"""status.py: the status patches and what they say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentexec import conditions, status
from agentexec.status import Connection

T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
DOWN = Connection(False, "TemporalUnavailable", "Temporal at t:7233 is unavailable")
UP = Connection(True, "Connected", "connected to t:7233")
WF = {"id": "agentexec/ns/a/u1", "runId": "r1", "namespace": "default", "taskQueue": "q"}


def body(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "generation": generation},
        "spec": {"agent": "echo", "message": "hi"},
    }
    if status is not None:
        obj["status"] = status
    return obj


def apply(obj: dict[str, Any], patch: dict[str, Any] | None) -> dict[str, Any]:
    assert patch is not None
    return {**obj, "status": {**obj.get("status", {}), **patch}}


def cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    found = conditions.condition_of(obj, ctype)
    assert found is not None, ctype
    return dict(found)


def test_workflow_id_is_derived_from_namespace_name_and_uid() -> None:
    assert status.workflow_id("ns", "a", "u1") == "agentexec/ns/a/u1"
    assert status.workflow_id("ns", "a", "u2") != status.workflow_id("ns", "a", "u1")


def test_waiting_says_why_and_counts_attempts() -> None:
    first = apply(body(), status.plan_waiting(body(), DOWN, T0, ttl=3600))
    assert first["status"]["phase"] == "Pending"
    assert first["status"]["startAttempts"] == 1
    assert first["status"]["queuedTime"] == "2026-11-28T12:00:00Z"
    assert cond(first, "TemporalConnected")["status"] == "False"
    assert cond(first, "TemporalConnected")["reason"] == "TemporalUnavailable"
    assert cond(first, "WorkflowStarted")["reason"] == "WaitingForTemporal"
    assert cond(first, "Succeeded")["status"] == "Unknown"
    second = apply(first, status.plan_waiting(first, DOWN, T0 + timedelta(seconds=30), 3600))
    assert second["status"]["startAttempts"] == 2
    assert second["status"]["queuedTime"] == "2026-11-28T12:00:00Z"
    # Same status: the transition time stays where the flip happened.
    assert cond(second, "TemporalConnected")["lastTransitionTime"] == "2026-11-28T12:00:00Z"


def test_waiting_past_the_ttl_fails_with_queue_timeout() -> None:
    waiting = apply(body(), status.plan_waiting(body(), DOWN, T0, ttl=60))
    late = apply(waiting, status.plan_waiting(waiting, DOWN, T0 + timedelta(seconds=61), 60))
    assert late["status"]["phase"] == "Failed"
    assert late["status"]["error"]["reason"] == "QueueTimeout"
    assert cond(late, "WorkflowStarted")["reason"] == "QueueTimeout"
    assert cond(late, "Succeeded")["status"] == "False"
    assert late["status"]["completionTime"]


def test_started_moves_to_running_and_flips_transition_times() -> None:
    waiting = apply(body(), status.plan_waiting(body(), DOWN, T0, ttl=3600))
    t1 = T0 + timedelta(seconds=5)
    running = apply(waiting, status.plan_started(waiting, t1, workflow=WF, conn=UP))
    assert running["status"]["phase"] == "Running"
    assert running["status"]["workflow"] == WF
    assert running["status"]["startAttempts"] == 2
    assert running["status"]["startTime"] == "2026-11-28T12:00:05Z"
    assert cond(running, "TemporalConnected")["lastTransitionTime"] == "2026-11-28T12:00:05Z"
    assert cond(running, "WorkflowStarted")["status"] == "True"


@pytest.mark.parametrize(
    ("phase", "reason", "succeeded"),
    [
        ("Succeeded", None, "True"),
        ("Failed", "RunnerFailed", "False"),
        ("Cancelled", "Deleted", "False"),
    ],
)
def test_terminal_phases(phase: str, reason: str | None, succeeded: str) -> None:
    running = apply(body(), status.plan_started(body(), T0, workflow=WF, conn=UP))
    done = apply(
        running,
        status.plan_report(
            running, T0, phase=phase, workflow=WF, conn=UP, output="out", reason=reason, message="m"
        ),
    )
    assert done["status"]["phase"] == phase
    assert cond(done, "Succeeded")["status"] == succeeded
    # Whichever way it ended: what `kubectl wait --for=condition=Completed` waits on.
    assert cond(done, "Completed")["status"] == "True"
    assert cond(done, "Completed")["reason"] == phase
    assert conditions.condition_of(running, "Completed") is None
    assert done["status"]["completionTime"]
    if phase == "Succeeded":
        assert done["status"]["output"] == "out"
        assert "error" not in done["status"]
    else:
        assert done["status"]["error"] == {"reason": reason, "message": "m"}


def test_a_terminal_phase_is_never_changed() -> None:
    done = apply(body(), status.plan_terminal(body(), "Succeeded", T0, output="x"))
    assert status.plan_report(done, T0, phase="Running", workflow=WF, conn=UP) is None
    assert status.plan_terminal(done, "Failed", T0, reason="Late") is None
    assert status.plan_waiting(done, DOWN, T0, 3600) is None
    assert status.plan_connection(done, DOWN, T0) is None


def test_connection_condition_only_written_when_it_changes() -> None:
    running = apply(body(), status.plan_started(body(), T0, workflow=WF, conn=UP))
    assert status.plan_connection(running, UP, T0) is None
    down = apply(running, status.plan_connection(running, DOWN, T0 + timedelta(seconds=9)))
    assert cond(down, "TemporalConnected")["status"] == "False"
    assert cond(down, "TemporalConnected")["lastTransitionTime"] == "2026-11-28T12:00:09Z"
    # The other conditions are kept as they were.
    assert cond(down, "WorkflowStarted") == cond(running, "WorkflowStarted")


def test_foreign_conditions_are_kept_and_generation_recorded() -> None:
    obj = body({"conditions": [{"type": "Audited", "status": "True"}, "garbage"]}, generation=3)
    out = apply(obj, status.plan_waiting(obj, DOWN, T0, 3600))
    types = [x["type"] for x in out["status"]["conditions"]]
    assert types == ["Audited", "TemporalConnected", "WorkflowStarted", "Succeeded"]
    assert cond(out, "TemporalConnected")["observedGeneration"] == 3
    assert out["status"]["observedGeneration"] == 3


@pytest.mark.parametrize(
    "odd",
    [None, {}, {"phase": 7}, {"conditions": "nope"}, {"startAttempts": "x", "queuedTime": 5}],
)
def test_odd_status_never_crashes(odd: dict[str, Any] | None) -> None:
    obj = body(odd)
    waiting = status.plan_waiting(obj, DOWN, T0, 3600)
    assert waiting is not None
    assert waiting["phase"] == "Pending"
    assert status.plan_started(obj, T0, workflow=WF, conn=UP) is not None


LIMIT = status.MAX_OUTPUT_BYTES


@pytest.mark.parametrize(
    ("case", "output", "kept", "length"),
    [
        ("empty", "", "", None),
        ("short", "done", "done", None),
        ("exactly the bound", "x" * LIMIT, "x" * LIMIT, None),
        ("one byte over", "x" * (LIMIT + 1), "x" * LIMIT, LIMIT + 1),
        # 2-byte characters after one ASCII byte: the bound falls inside one.
        ("cut inside a 2-byte character", "a" + "é" * LIMIT, "a" + "é" * ((LIMIT - 1) // 2), 1 + 2 * LIMIT),  # noqa: E501
        ("3-byte characters", "€" * LIMIT, "€" * (LIMIT // 3), 3 * LIMIT),
        ("4-byte characters", "x" + "😀" * LIMIT, "x" + "😀" * ((LIMIT - 1) // 4), 1 + 4 * LIMIT),
        ("multi-byte within the bound: kept whole", "é" * (LIMIT // 2), "é" * (LIMIT // 2), None),
        ("a lone surrogate never crashes", "\ud800" * LIMIT, "\ud800" * (LIMIT // 3), 3 * LIMIT),
    ],
)  # fmt: skip
def test_output_is_bounded_in_utf8_bytes_and_never_cut_silently(
    case: str, output: str, kept: str, length: int | None
) -> None:
    done = status.plan_terminal(body(), "Succeeded", T0, output=output)
    assert done is not None
    assert done["output"] == kept, case
    assert len(done["output"].encode("utf-8", "surrogatepass")) <= LIMIT, case
    if length is None:
        assert "outputTruncated" not in done, case
        assert "outputLength" not in done, case
    else:
        assert done["outputTruncated"] is True, case
        assert done["outputLength"] == length, case
