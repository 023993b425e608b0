"""Installs never cross (issue #22): the operator's poller check against a
real Temporal dev server, with pollers of another install on its queues."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from agentexec.metrics import Metrics
from agentexec.settings import Settings, TemporalSettings
from agentexec.temporal.manager import TemporalManager, WorkerSpec
from agentexec.temporal.queues import ACTIVITY, WORKFLOW, Foreign, PollerCheck, worker_identity
from localenv.temporal import TemporalDevServer
from tests.integration import workflows
from tests.support.waiting import eventually


async def test_pollers_of_another_install_on_our_queues_are_named(
    temporal: TemporalDevServer, task_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    ours = dataclasses.replace(
        Settings(temporal=TemporalSettings(address=temporal.address)),
        install=f"ns.{task_queue}"[:100],
        task_queue=f"{task_queue}-wf",
        runner_task_queue=f"{task_queue}-runner",
    )
    metrics = Metrics()
    # Our operator: its workflow worker on its own queue, with its identity.
    manager = TemporalManager(
        ours.temporal,
        [WorkerSpec(task_queue=ours.task_queue, workflows=[workflows.EchoWorkflow],
                    activities=[workflows.echo])],
        metrics,
        identity=worker_identity(ours, "operator", "pod-0"),
    )  # fmt: skip
    check = PollerCheck(manager, ours, metrics)
    async with manager:
        await eventually(lambda: manager.workers_running, lambda n: n == 1, timeout=30,
                         what="our worker polling")  # fmt: skip
        found = await eventually(check.check, lambda f: f == [], timeout=15, what="only ours")
        assert found == []

        # Another install's runner takes activities from our runner queue.
        other = await Client.connect(temporal.address, identity="other.rel:runner:pod-9:1")
        async with Worker(other, task_queue=ours.runner_task_queue, activities=[workflows.echo]):
            with caplog.at_level(logging.WARNING, "agentexec.queues"):
                found = await eventually(
                    check.check, lambda f: bool(f), timeout=30, what="the foreign poller seen"
                )
    assert found == [Foreign(ours.runner_task_queue, ACTIVITY, ("other.rel:runner:pod-9:1",))]
    gauge = metrics.registry.get_sample_value(
        "agentexec_foreign_pollers",
        {"task_queue": ours.runner_task_queue, "task_queue_type": ACTIVITY},
    )
    assert gauge == 1.0
    assert (
        metrics.registry.get_sample_value(
            "agentexec_foreign_pollers",
            {"task_queue": ours.task_queue, "task_queue_type": WORKFLOW},
        )
        == 0.0
    )
    [warning] = [r for r in caplog.records if "does not own" in r.getMessage()]
    assert warning.pollers == ["other.rel:runner:pod-9:1"]  # type: ignore[attr-defined]
    assert warning.task_queue == ours.runner_task_queue  # type: ignore[attr-defined]
