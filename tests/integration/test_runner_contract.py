"""External runners one version older or newer than the workflow (issue #11, 4).

A runner in another deployment (or language) serves the ``run_agent``
activity with its own idea of AgentRequest and AgentResult. Whatever it gets
wrong, the execution must end with a reason that says so, never sit Running
with its workflow task failing over and over where only Temporal's UI shows it.
Real dev server, real workers; only the runners are this test's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from agentexec.temporal.types import (
    EXECUTION_FAILED,
    RUN_AGENT_ACTIVITY,
    Attempts,
    ExecutionInput,
    ExecutionRef,
    ExecutionResult,
)
from agentexec.temporal.workflows import AgentExecutionWorkflow
from localenv.temporal import TemporalDevServer
from tests.support.workflows import workflow_worker


@dataclass
class NewerRequest:
    """A runner one version newer: a field the workflow does not send yet."""

    agent: str
    message: str
    priority: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class StricterRequest:
    """A newer runner that *requires* a field the workflow does not send."""

    agent: str
    message: str
    tenant: str


@dataclass
class OlderRequest:
    """A runner one version older: knows neither session_id nor execution."""

    agent: str
    message: str


@activity.defn(name=RUN_AGENT_ACTIVITY)
async def newer_runner(request: NewerRequest) -> dict[str, Any]:
    # Answers with a field the workflow does not know yet.
    return {"output": f"newer:{request.message}", "tokens": 12}


@activity.defn(name=RUN_AGENT_ACTIVITY)
async def older_runner(request: OlderRequest) -> dict[str, Any]:
    return {"output": f"older:{request.message}"}


@activity.defn(name=RUN_AGENT_ACTIVITY)
async def stricter_runner(request: StricterRequest) -> dict[str, Any]:
    raise AssertionError("never reached: the request cannot be decoded")


@activity.defn(name=RUN_AGENT_ACTIVITY)
async def renamed_output_runner(request: OlderRequest) -> dict[str, Any]:
    # A runner whose AgentResult calls the field something else.
    return {"text": request.message}


@activity.defn(name=RUN_AGENT_ACTIVITY)
async def no_result_runner(request: OlderRequest) -> None:
    return None


async def run_with(
    temporal: TemporalDevServer, task_queue: str, runner: Callable[..., Any]
) -> tuple[ExecutionResult, list[ExecutionResult]]:
    reports: list[ExecutionResult] = []
    client = await Client.connect(temporal.address)
    runner_queue = f"{task_queue}-runner"
    async with (
        workflow_worker(client, task_queue, lambda r: reports.append(r.result)),
        Worker(client, task_queue=runner_queue, activities=[runner]),
    ):
        handle: WorkflowHandle[Any, ExecutionResult] = await client.start_workflow(
            AgentExecutionWorkflow.run,
            ExecutionInput(
                ref=ExecutionRef("contract", task_queue, str(uuid.uuid4())),
                agent="echo",
                message="hi",
                runner_task_queue=runner_queue,
                timeout_seconds=60,
                session_id="s-1",
            ),
            id=f"contract-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        failure: BaseException | None = None
        try:
            # Three attempts with 1 s and 2 s backoff fit well inside this.
            result = await asyncio.wait_for(handle.result(), 30)
        except WorkflowFailureError as err:
            failure = err.cause
        except TimeoutError:
            failures = [
                e.workflow_task_failed_event_attributes.failure.message
                async for e in handle.fetch_history_events()
                if e.HasField("workflow_task_failed_event_attributes")
            ]
            pytest.fail(
                f"the workflow never finished: {len(failures)} workflow task failures, "
                f"last {failures[-1:]}; reports {reports}"
            )
    if failure is not None:
        # A failed agent fails the workflow after reporting (so Temporal's UI
        # and metrics see it too); the report is what the resource gets.
        assert isinstance(failure, ApplicationError), failure
        assert failure.type == EXECUTION_FAILED, failure
        assert reports, "the workflow failed without reporting"
        result = reports[-1]
        assert failure.message == result.message, (failure, result)
    return result, reports


@pytest.mark.parametrize(
    ("runner", "output"),
    [(newer_runner, "newer:hi"), (older_runner, "older:hi")],
    ids=["newer", "older"],
)
async def test_a_runner_one_version_apart_keeps_working(
    temporal: TemporalDevServer, task_queue: str, runner: Callable[..., Any], output: str
) -> None:
    result, reports = await run_with(temporal, task_queue, runner)
    assert (result.phase, result.output) == ("Succeeded", output)
    assert result.attempts == Attempts(count=1)
    assert reports == [result]


async def test_a_runner_that_requires_an_unknown_field_fails_naming_it(
    temporal: TemporalDevServer, task_queue: str
) -> None:
    result, reports = await run_with(temporal, task_queue, stricter_runner)
    assert (result.phase, result.reason) == ("Failed", "RunnerFailed")
    assert "tenant" in (result.message or ""), result
    # A runner that cannot decode the request fails every attempt alike:
    # backoffLimit (2) spent, each failure said as it happened.
    assert result.attempts is not None
    assert result.attempts.failed == 3
    assert [r.reason for r in reports] == ["AttemptFailed", "AttemptFailed", "RunnerFailed"]
    assert reports[-1] == result


@pytest.mark.parametrize(
    ("runner", "shown"),
    [(renamed_output_runner, "'output'"), (no_result_runner, "None")],
    ids=["renamed-output", "no-result"],
)
async def test_a_result_without_output_fails_the_execution_clearly(
    temporal: TemporalDevServer, task_queue: str, runner: Callable[..., Any], shown: str
) -> None:
    result, reports = await run_with(temporal, task_queue, runner)
    assert (result.phase, result.reason) == ("Failed", "RunnerFailed"), result
    message = result.message or ""
    assert RUN_AGENT_ACTIVITY in message, result
    assert shown in message, result
    assert reports == [result]  # what the runner sent does not change: not retried
