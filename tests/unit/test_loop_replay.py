"""Every recorded AgentLoop history replays on the current loop code
(tests/fixtures/loop-histories/README.md says how they were recorded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from agentexec.temporal.loop import AgentLoopWorkflow
from agentexec.temporal.steps import LOOP_WORKFLOW_TYPE

HISTORIES = Path(__file__).resolve().parents[1] / "fixtures" / "loop-histories"
PATHS = {
    "tools_succeeded",
    "runner_killed",
    "approved_then_timed_out",
    "approval_timeout_approve",
    "approval_timeout_fail",
    "continued_as_new",
    "continued_last_run",
    "rate_limited",
    "provider_rejected",
    "suspended",
}


def histories() -> list[Path]:
    return sorted(HISTORIES.glob("*/*.json"), key=str)


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"{path.parent.name}/{path.stem}", path.read_text())


def test_every_recorded_version_covers_every_path() -> None:
    versions = [d for d in HISTORIES.iterdir() if d.is_dir()]
    assert versions
    for version in versions:
        assert {p.stem for p in version.glob("*.json")} >= PATHS, version.name


@pytest.mark.parametrize("path", histories(), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_loop_replays_on_current_code(path: Path) -> None:
    history = load(path)
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.workflow_type.name == LOOP_WORKFLOW_TYPE
    await Replayer(workflows=[AgentLoopWorkflow]).replay_workflow(history)
