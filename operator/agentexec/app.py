"""The operator process: one place that starts, and stops, every long-lived task."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import Sequence
from typing import Any

import kopf

from agentexec import handlers
from agentexec.executions import Reconciler
from agentexec.http import build_app, start_http
from agentexec.kube import Kube
from agentexec.metrics import Metrics
from agentexec.runner import load_agents
from agentexec.runner.activity import RunnerActivities
from agentexec.settings import Settings
from agentexec.temporal.manager import TemporalManager, WorkerSpec
from agentexec.temporal.workflows import AgentExecutionWorkflow

log = logging.getLogger("agentexec")


def build_worker_specs(settings: Settings, reconciler: Reconciler) -> Sequence[WorkerSpec]:
    """The operator's workflow worker, and the built-in runner unless disabled."""
    specs = [
        WorkerSpec(
            task_queue=settings.task_queue,
            workflows=[AgentExecutionWorkflow],
            activities=[reconciler.report_status],
            # Each cached run holds a sandbox; the SDK default (1000) alone
            # would cost more memory than the rest of the operator.
            max_cached_workflows=200,
        )
    ]
    if settings.runner_enabled:
        agents = load_agents()
        log.info(
            "built-in runner",
            extra={"agents": sorted(agents), "task_queue": settings.runner_task_queue},
        )
        specs.append(
            WorkerSpec(
                task_queue=settings.runner_task_queue,
                activities=[RunnerActivities(agents).run_agent],
            )
        )
    return specs


async def run(settings: Settings) -> None:
    metrics = Metrics()
    kube = await Kube.connect()
    manager = TemporalManager(settings.temporal, (), metrics)
    reconciler = Reconciler(settings, manager, kube, metrics)
    manager.set_workers(build_worker_specs(settings, reconciler))
    ready = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def status() -> dict[str, Any]:
        return {
            "temporal": manager.status(),
            "kubernetes": {"watching": ready.is_set()},
            "executions": {
                "known": len(reconciler.records),
                "waiting_for_temporal": reconciler.waiting,
            },
        }

    def readiness() -> tuple[bool, str]:
        # Ready once kopf's watches run; Temporal's state is data, not health.
        return (True, "watching") if ready.is_set() else (False, "starting")

    runner = await start_http(build_app(metrics, status, readiness), settings.http_port)
    log.info("operator starting", extra={"http_port": settings.http_port, **manager.log_fields})
    try:
        async with manager:
            reconciler.start()
            try:
                await kopf.operator(
                    registry=handlers.registry,
                    clusterwide=not settings.watch_namespaces,
                    namespaces=settings.watch_namespaces,
                    standalone=settings.peering is None,
                    peering_name=settings.peering,
                    # kopf freezes every peer of equal priority: each replica
                    # draws its own, and the highest reconciles.
                    priority=random.randint(1, 1_000_000) if settings.peering else None,
                    memo=kopf.Memo(settings=settings, reconciler=reconciler),
                    stop_flag=stop,
                    ready_flag=ready,
                )
            finally:
                await reconciler.stop()
    finally:
        await runner.cleanup()
        await kube.close()
        log.info("operator stopped")
