"""Changed copies of AgentExecutionWorkflow that prove the replay test can fail.

Each is registered under the real workflow type, so the replayer runs it
against the recorded histories exactly as an upgraded operator would.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from agentexec.temporal.types import WORKFLOW_TYPE, ExecutionInput, ExecutionResult
    from agentexec.temporal.workflows import AgentExecutionWorkflow

PREPARE = "prepare_agent"


@workflow.defn(name=WORKFLOW_TYPE)
class ActivityBeforeAgent(AgentExecutionWorkflow):
    """Schedules a new activity before the agent: a running workflow would break."""

    @workflow.run
    async def run(self, inp: ExecutionInput) -> ExecutionResult:
        await _prepare(inp)
        return await super().run(inp)


@workflow.defn(name=WORKFLOW_TYPE)
class PatchedActivityBeforeAgent(AgentExecutionWorkflow):
    """The same change behind ``workflow.patched``: old histories take the old path."""

    @workflow.run
    async def run(self, inp: ExecutionInput) -> ExecutionResult:
        if workflow.patched("prepare-agent"):
            await _prepare(inp)
        return await super().run(inp)


async def _prepare(inp: ExecutionInput) -> None:
    await workflow.execute_activity(
        PREPARE, inp.agent, start_to_close_timeout=timedelta(seconds=30)
    )
