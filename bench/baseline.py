"""The bare-SDK baseline of bench/executions.py: the same echo activity,
started and awaited directly, in the same (sandboxed) kind of workflow."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from agentexec.temporal.types import AgentRequest, AgentResult


@workflow.defn(name="BaselineEcho")
class BaselineEcho:
    @workflow.run
    async def run(self, message: str) -> str:
        out: AgentResult = await workflow.execute_activity(
            "run_agent",
            AgentRequest(agent="echo", message=message),
            start_to_close_timeout=timedelta(seconds=60),
            result_type=AgentResult,
        )
        return out.output
