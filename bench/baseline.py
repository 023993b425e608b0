"""Bare-SDK baselines: the echo activity started and awaited directly, in the
same (sandboxed) kind of workflow as the operator's.

- ``BaselineEcho`` (bench/executions.py): one activity.
- ``BaselineSteps`` (bench/agent_loop.py): ``n`` echo activities one after
  the other on a runner queue, each taking ``delay`` seconds (as long as a
  step's call), nothing else: what Temporal itself costs per activity round
  trip (schedule, dispatch, complete, the next workflow task) on the machine
  and server the agent loop is measured on.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

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


@workflow.defn(name="BaselineSteps")
class BaselineSteps:
    @workflow.run
    async def run(self, runner_queue: str, n: int, delay: float) -> int:
        for i in range(n):
            await workflow.execute_activity(
                "run_agent",
                AgentRequest(agent="echo", message=str(i), parameters={"delaySeconds": delay}),
                task_queue=runner_queue,
                start_to_close_timeout=timedelta(seconds=60),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        return n
