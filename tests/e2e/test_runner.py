"""Agents run in runner processes, not in the operator (issue #13): the
operator, a runner beside it, a real API server and a real Temporal."""

from __future__ import annotations

import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.support.operator import OperatorProcess, RunnerProcess
from tests.support.waiting import eventually

AGENTS = Path(__file__).parents[1] / "support" / "programs" / "runner_agents.py"
MakeOperator = Callable[..., OperatorProcess]


def healthz_seconds(operator: OperatorProcess) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.http_port}/healthz", timeout=5) as r:
        assert r.status == 200
    return time.monotonic() - started


async def test_a_blocking_agent_runs_in_the_runner_and_the_operator_stays_responsive(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    tmp_path: Path,
) -> None:
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false")  # the chart's default
    queue = operator.runner_queue
    runner = RunnerProcess(
        tmp_path, temporal.address, queue, argv=[sys.executable, str(AGENTS), queue]
    )
    runner.start()
    try:
        # The operator polls its workflow queue only.
        assert operator.statusz()["temporal"]["worker_task_queues"] == [operator.task_queue]
        # `blocking` is no agent of the image, so the execution names the
        # queue of the runner that serves it (allowed in these tests).
        aex.create(
            control_plane, namespace, "blocker", "x",
            agent="blocking", parameters={"seconds": 5}, taskQueue=queue,
        )  # fmt: skip
        timings: list[float] = []
        phases: list[str | None] = []

        def probe() -> str | None:
            timings.append(healthz_seconds(operator))
            phases.append(aex.phase(aex.get(control_plane, namespace, "blocker")))
            return phases[-1]

        await eventually(probe, lambda p: p == "Succeeded", timeout=60, interval=0.1,
                         what="blocker Succeeded")  # fmt: skip
        # Probed throughout the 5 s the agent blocked its runner's event loop.
        assert phases.count("Running") >= 10, phases
        assert max(timings) < 1.0, sorted(timings)[-5:]
        status, metrics = runner.get("/metrics")
        assert status == 200
        assert (
            'agentexec_runner_agent_attempts_total{agent="blocking",outcome="succeeded"} 1.0'
            in (metrics)
        )
        assert aex.get(control_plane, namespace, "blocker")["status"]["output"] == "blocked"
    finally:
        runner.stop()
