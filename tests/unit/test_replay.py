"""Every recorded workflow history replays on the current workflow code (issue #11, 4).

An upgrade replays each running workflow on the new operator image; a change
that schedules different commands for the same history is non-deterministic
and would wedge those workflows. The histories under tests/fixtures/histories
were recorded from released versions by hack/record_histories.py; they are
never re-recorded to make this test pass. The replayer needs no server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from agentexec.temporal.types import WORKFLOW_TYPE
from agentexec.temporal.workflows import ATTEMPT_LOOP, AgentExecutionWorkflow
from tests.unit.replay_variants import ActivityBeforeAgent, PatchedActivityBeforeAgent

HISTORIES = Path(__file__).resolve().parents[1] / "fixtures" / "histories"
# The paths a running workflow can be on when an upgrade lands.
PATHS = {
    "succeeded",
    "agent_failed",
    "unknown_agent",
    "runner_retried",
    "agent_timeout",
    "cancelled",
    "report_retried",
}
# And those of versions with the attempt loop (issue #19).
LOOP_PATHS = {"disrupted", "suspended", "no_runner"}


def manifests() -> dict[str, dict[str, Any]]:
    return {
        d.name: json.loads((d / "manifest.json").read_text())
        for d in sorted(HISTORIES.iterdir())
        if d.is_dir()
    }


def fixture_files() -> list[Path]:
    return sorted(HISTORIES.glob("*/*.json"), key=str)


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"{path.parent.name}/{path.stem}", path.read_text())


def histories() -> list[Path]:
    return [p for p in fixture_files() if p.name != "manifest.json"]


def patches(history: WorkflowHistory) -> set[str]:
    """The workflow.patched() ids a history recorded."""
    found = set()
    for event in history.events:
        if event.HasField("marker_recorded_event_attributes"):
            data = event.marker_recorded_event_attributes.details.get("patch-data")
            if data is not None and data.payloads:
                found.add(json.loads(data.payloads[0].data)["id"])
    return found


def test_every_recorded_version_covers_every_path() -> None:
    found = manifests()
    assert found, f"no recorded histories under {HISTORIES}"
    loop_versions = set()
    for label, manifest in found.items():
        assert manifest["workflow_type"] == WORKFLOW_TYPE, label
        recorded = {n: load(HISTORIES / label / f"{n}.json") for n in manifest["histories"]}
        loop = any(ATTEMPT_LOOP in patches(h) for h in recorded.values())
        missing = (PATHS | (LOOP_PATHS if loop else set())) - set(recorded)
        assert not missing, f"{label} lacks the paths {sorted(missing)}"
        for name, history in recorded.items():
            started = history.events[0].workflow_execution_started_event_attributes
            assert started.workflow_type.name == WORKFLOW_TYPE, f"{label}/{name}"
        if loop:
            loop_versions.add(label)
    # The current code's paths are recorded: a later change to them is caught.
    assert loop_versions, "no recorded version has the attempt loop's paths"


@pytest.mark.parametrize("path", histories(), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_history_replays_on_current_code(path: Path) -> None:
    # Raises (with the history's ID) on non-determinism or any workflow task failure.
    await Replayer(workflows=[AgentExecutionWorkflow]).replay_workflow(load(path))


async def test_an_activity_added_before_the_agent_is_caught() -> None:
    """The check itself works: an unguarded new command fails every history."""
    results = await Replayer(workflows=[ActivityBeforeAgent]).replay_workflows(
        _iter(histories()), raise_on_replay_failure=False
    )
    # Keyed by run ID: every recorded run fails, each on non-determinism.
    assert set(results.replay_failures) == {load(p).run_id for p in histories()}
    for run_id, failure in results.replay_failures.items():
        assert isinstance(failure, NondeterminismError), (run_id, failure)


async def test_the_same_change_behind_patched_replays() -> None:
    results = await Replayer(workflows=[PatchedActivityBeforeAgent]).replay_workflows(
        _iter(histories()), raise_on_replay_failure=False
    )
    assert results.replay_failures == {}


async def _iter(paths: list[Path]) -> Any:
    for path in paths:
        yield load(path)
