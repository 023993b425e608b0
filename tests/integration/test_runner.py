"""Runners as their own workload (issue #13): `agentexec-operator runner` and
programs on the public runner API, as real processes against a real Temporal
dev server. The workflow worker is this test's (the operator's workflow with
report_status recorded in memory): only the runners are under test here.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle

from agentexec.temporal.types import (
    ExecutionInput,
    ExecutionRef,
    ExecutionResult,
)
from agentexec.temporal.workflows import AgentExecutionWorkflow
from localenv.procs import free_port
from localenv.temporal import TemporalDevServer
from tests.support.operator import RunnerProcess
from tests.support.waiting import eventually
from tests.support.workflows import workflow_worker

AGENTS = Path(__file__).parents[1] / "support" / "programs" / "runner_agents.py"


class Executions:
    """Starts AgentExecution workflows on the test's queue; the runners serve
    ``runner_queue``."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        self.runner_queue = f"{task_queue}-runner"
        self.reports: list[ExecutionResult] = []

    async def start(
        self,
        agent: str = "echo",
        message: str = "hi",
        heartbeat_timeout: int = 30,
        timeout: int = 120,
        **parameters: Any,
    ) -> WorkflowHandle[Any, ExecutionResult]:
        return await self.client.start_workflow(
            AgentExecutionWorkflow.run,
            ExecutionInput(
                ref=ExecutionRef("runner", self.task_queue, str(uuid.uuid4())),
                agent=agent,
                message=message,
                runner_task_queue=self.runner_queue,
                timeout_seconds=timeout,
                parameters=parameters,
                heartbeat_timeout_seconds=heartbeat_timeout,
            ),
            id=f"runner-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )

    def runner(self, tmp_path: Path, name: str = "runner", **env: str) -> RunnerProcess:
        return RunnerProcess(tmp_path, self.address, self.runner_queue, env=env, name=name)

    def api_runner(self, tmp_path: Path, name: str = "api-runner") -> RunnerProcess:
        argv = [sys.executable, str(AGENTS), self.runner_queue]
        return RunnerProcess(tmp_path, self.address, self.runner_queue, argv=argv, name=name)

    address = ""


@pytest.fixture
async def executions(temporal: TemporalDevServer, task_queue: str) -> AsyncIterator[Executions]:
    client = await Client.connect(temporal.address)
    ex = Executions(client, task_queue)
    ex.address = temporal.address

    async with workflow_worker(client, task_queue, lambda r: ex.reports.append(r.result)):
        yield ex


@pytest.fixture
def runners() -> Iterator[list[RunnerProcess]]:
    started: list[RunnerProcess] = []
    yield started
    for runner in started:
        runner.stop()


def disrupted(result: ExecutionResult) -> tuple[int, int, int, str | None]:
    """(attempts, failed, disrupted, the last disruption's reason)."""
    a = result.attempts
    assert a is not None, result
    return a.count, a.failed, a.disrupted, a.last_disruption.reason if a.last_disruption else None


async def pending_agent(handle: WorkflowHandle[Any, Any]) -> Any:
    desc = await handle.describe()
    pending = list(desc.raw_description.pending_activities)
    return pending[0] if pending else None


def attempts(runner: RunnerProcess, agent: str, outcome: str) -> float:
    status, text = runner.get("/metrics")
    assert status == 200
    pattern = rf'agentexec_runner_agent_attempts_total{{agent="{agent}",outcome="{outcome}"}} (\S+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


async def test_the_runner_subcommand_serves_an_execution(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    runner = executions.runner(tmp_path)
    runners.append(runner)
    runner.start()
    handle = await executions.start(message="from a runner process")
    result = await asyncio.wait_for(handle.result(), 30)
    assert (result.phase, result.output) == ("Succeeded", "from a runner process")
    assert attempts(runner, "echo", "succeeded") == 1
    assert runner.get("/healthz")[0] == 200
    assert runner.get("/readyz")[0] == 200
    status = runner.statusz()
    assert status["role"] == "runner"
    assert status["runner"]["agents"] == ["chat", "echo"]  # every agent registered
    assert status["runner"]["task_queues"] == [executions.runner_queue]


async def test_a_runner_is_ready_only_once_it_serves_its_queues(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    # A wrong Temporal address (here a closed port) keeps a new runner unready,
    # so a rollout stalls instead of replacing runners that work.
    lost = RunnerProcess(tmp_path, f"127.0.0.1:{free_port()}", executions.runner_queue, name="lost")
    runners.append(lost)
    lost.start(wait=False)
    await eventually(
        lambda: lost.get("/healthz") if lost.running else None,
        lambda got: got is not None and got[0] == 200,
        timeout=30,
        what="the lost runner's /healthz",
    )
    # Past its first failed dials (connect timeout 3 s): still unready, and why.
    await eventually(
        lambda: lost.statusz()["temporal"]["dial_attempts"],
        lambda n: n >= 2,
        timeout=30,
        what="two failed dials",
    )
    status, body = lost.get("/readyz")
    assert (status, lost.running) == (503, True), body
    assert "waiting for Temporal" in body

    found = executions.runner(tmp_path, name="found")
    runners.append(found)
    found.start(wait=False)
    await eventually(
        lambda: found.get("/readyz") if found.running else None,
        lambda got: got is not None and got[0] == 200,
        timeout=60,
        what="the runner on the dev server ready",
    )
    assert found.statusz()["temporal"]["workers_running"] == 1


async def test_two_runners_share_a_queue(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    # One agent at a time each: six one-second agents need both runners.
    one, two = (
        executions.runner(tmp_path, name=n, AGENTEXEC_RUNNER_MAX_CONCURRENT="1")
        for n in ("runner-1", "runner-2")
    )
    runners.extend([one, two])
    one.start()
    two.start()
    handles = [await executions.start(message=f"m{n}", delaySeconds=1) for n in range(6)]
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
    assert [r.output for r in results] == [f"m{n}" for n in range(6)]
    served = (attempts(one, "echo", "succeeded"), attempts(two, "echo", "succeeded"))
    assert sum(served) == 6, served
    assert min(served) >= 1, served


async def test_a_killed_runner_mid_agent_is_retried_once_on_the_other(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    one, two = (executions.runner(tmp_path, name=n) for n in ("runner-1", "runner-2"))
    runners.extend([one, two])
    one.start()
    two.start()
    handle = await executions.start(message="survivor", heartbeat_timeout=3, delaySeconds=4)
    busy = await eventually(
        lambda: [r for r in (one, two) if r.statusz()["runner"]["in_flight"] == 1],
        lambda found: len(found) == 1,
        timeout=20,
        what="a runner running the agent",
    )
    victim = busy[0]
    other = two if victim is one else one
    victim.kill()
    # Noticed within the heartbeat timeout (3 s), retried at once, then 4 s of
    # agent: well inside 30 s, which is one default heartbeat timeout.
    result = await asyncio.wait_for(handle.result(), 30)
    assert (result.phase, result.output) == ("Succeeded", "survivor")
    # A disruption: retried once, backoffLimit untouched.
    assert disrupted(result) == (2, 0, 1, "HeartbeatTimeout")
    assert attempts(other, "echo", "succeeded") == 1
    assert [r.reason for r in executions.reports] == ["AttemptDisrupted", None]
    assert executions.reports[-1] == result


async def test_sigterm_lets_agents_finish_within_the_grace_then_hands_the_rest_over(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    # Grace 5 s (RunnerProcess): a 2 s agent finishes on the stopping runner;
    # a 60 s one is cancelled at the end of the grace and retried at once on the
    # other runner, long before its 30 s heartbeat timeout would have noticed.
    first = executions.runner(tmp_path, name="runner-1")
    runners.append(first)
    first.start()
    short = await executions.start(message="short", delaySeconds=2)
    long = await executions.start(message="long", delaySeconds=8, timeout=300)
    await eventually(
        lambda: first.statusz()["runner"]["in_flight"],
        lambda n: n == 2,
        timeout=20,
        what="both agents running",
    )
    first.terminate()
    second = executions.runner(tmp_path, name="runner-2")
    runners.append(second)
    second.start()
    finished = await asyncio.wait_for(short.result(), 20)
    assert finished.output == "short"
    assert disrupted(finished) == (1, 0, 0, None)
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    await eventually(lambda: first.returncode, lambda rc: rc == 0, timeout=20, what="exit 0")
    handed_over = await asyncio.wait_for(long.result(), 40)
    assert handed_over.output == "long"
    assert disrupted(handed_over) == (2, 0, 1, "RunnerShutdown")
    # Retried after the grace, not after the heartbeat timeout (30 s) + 8 s.
    assert loop.time() - stopped_at < 30
    assert "stop requested" in first.log()


async def test_the_prestop_drain_answers_once_the_agents_in_flight_finished(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    # The chart's preStop hook, `runner --drain` in the pod: GET /drain on
    # loopback stops the runner taking agents and answers when those in
    # flight are done (finished within the grace here), so the kubelet's
    # SIGTERM finds nothing left to hand over.
    runner = executions.runner(tmp_path)
    runners.append(runner)
    runner.start()
    handle = await executions.start(message="drained", delaySeconds=3)
    await eventually(
        lambda: runner.statusz()["runner"]["in_flight"], lambda n: n == 1, what="the agent running"
    )
    # From anywhere but the pod itself (whoever may scrape its metrics), /drain
    # is refused and nothing stops.
    for address in own_addresses():
        status, body = await asyncio.to_thread(runner.get, "/drain", 5, address)
        assert status == 403, body
    assert runner.statusz()["runner"]["stopping"] is False
    loop = asyncio.get_running_loop()
    asked = loop.time()
    hook = await asyncio.to_thread(runner.run_in_pod, ["agentexec-operator", "runner", "--drain"])
    assert (hook.returncode, hook.stdout.strip()) == (0, '{"drained": true}'), hook
    result = await asyncio.wait_for(handle.result(), 10)
    assert result.output == "drained"
    assert disrupted(result) == (1, 0, 0, None)  # finished where it ran
    assert loop.time() - asked >= 1.5  # answered after the agent, not at once
    await eventually(lambda: runner.returncode, lambda rc: rc == 0, what="the runner exited 0")
    assert "preStop" in runner.log()


async def test_a_slow_api_agent_does_not_time_out_its_heartbeats_are_automatic(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    runner = executions.api_runner(tmp_path)
    runners.append(runner)
    runner.start()
    # Three heartbeat timeouts long, and the agent never heartbeats itself.
    handle = await executions.start("slow", heartbeat_timeout=2, seconds=6)
    result = await asyncio.wait_for(handle.result(), 40)
    assert (result.phase, result.output) == ("Succeeded", "slept 6s")
    assert disrupted(result) == (1, 0, 0, None)


async def test_cancellation_reaches_an_api_agent(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    runner = executions.api_runner(tmp_path)
    runners.append(runner)
    runner.start()
    marker = tmp_path / "marker"
    # The default heartbeat timeout (30 s): the agent must hear of the cancel
    # through its runner's heartbeats, long before any timeout could stop it.
    handle = await executions.start("cancellable", marker=str(marker))
    await eventually(
        lambda: marker.read_text() if marker.exists() else "", lambda t: t == "started", timeout=20
    )
    await handle.cancel()  # what deleting the AgentExecution does
    await eventually(
        lambda: marker.read_text(),
        lambda t: t == "cancelled",
        timeout=10,
        what="the agent's marker",
    )
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), 20)
    assert executions.reports[-1].phase == "Cancelled"
    assert attempts(runner, "cancellable", "cancelled") == 1


async def test_a_retried_api_agent_resumes_from_its_checkpoint(
    executions: Executions, runners: list[RunnerProcess], tmp_path: Path
) -> None:
    first = executions.api_runner(tmp_path, name="api-runner-1")
    runners.append(first)
    first.start()
    handle = await executions.start("checkpointed", message="m", heartbeat_timeout=3)
    # The checkpoint is on the server (the pending activity's heartbeat details).
    checkpointed = await eventually(
        lambda: pending_agent(handle),
        lambda p: p is not None and p.HasField("heartbeat_details"),
        timeout=45,  # a runner process starting on a loaded 2-core machine
        what="a checkpoint recorded",
    )
    # Later automatic heartbeats must carry the checkpoint, not erase it.
    since = checkpointed.last_heartbeat_time.ToDatetime()
    await eventually(
        lambda: pending_agent(handle),
        lambda p: (p.last_heartbeat_time.ToDatetime() - since).total_seconds() >= 2,
        timeout=20,
        what="heartbeats after the checkpoint",
    )
    first.kill()
    second = executions.api_runner(tmp_path, name="api-runner-2")
    runners.append(second)
    second.start()
    result = await asyncio.wait_for(handle.result(), 30)
    assert result.output == "attempt 2 resumed from [('note', 'm'), ('step', 1)]", result


def own_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (as a pod's IP is)."""
    found = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
    return [a for a in found.stdout.split() if "." in a and not a.startswith("127.")]
