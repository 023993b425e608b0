"""The operator process: one place that starts, and stops, every long-lived task."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kopf

from agentexec import __version__, handlers
from agentexec.controller import Controller
from agentexec.http import build_app, start_http
from agentexec.kube import Kube
from agentexec.leader import LeaseElector
from agentexec.metrics import Metrics
from agentexec.runner import load_agents
from agentexec.runner.activity import RunnerActivities
from agentexec.settings import Settings
from agentexec.temporal.manager import TemporalManager, WorkerSpec
from agentexec.temporal.workflows import AgentExecutionWorkflow

log = logging.getLogger("agentexec")
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def build_worker_specs(settings: Settings, controller: Controller) -> Sequence[WorkerSpec]:
    """The operator's workflow worker, and the built-in runner unless disabled."""
    specs = [
        WorkerSpec(
            task_queue=settings.task_queue,
            workflows=[AgentExecutionWorkflow],
            activities=[controller.report_status],
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


def lease_namespace(settings: Settings) -> str:
    if settings.leader_election_namespace:
        return settings.leader_election_namespace
    if settings.pod_namespace:
        return settings.pod_namespace
    try:
        return SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def identity(settings: Settings) -> str:
    # In a pod, the pod name: a restarted container takes its own Lease back
    # at once. Elsewhere host and pid: two local processes never share one.
    return settings.pod_name or f"{socket.gethostname()}-{os.getpid()}"


async def run(settings: Settings) -> None:
    metrics = Metrics()
    kube = await Kube.connect()
    manager = TemporalManager(settings.temporal, (), metrics)
    controller = Controller(settings, manager, kube, metrics)
    manager.set_workers(build_worker_specs(settings, controller))
    ready = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    elector = (
        LeaseElector(
            kube,
            lease_namespace(settings),
            settings.leader_election_name,
            identity(settings),
            controller.start_leading,
            controller.stop_leading,
            lease_duration=settings.leader_election_lease_seconds,
            renew_deadline=settings.leader_election_lease_seconds * 2 / 3,
            retry_period=max(0.5, settings.leader_election_lease_seconds / 7.5),
        )
        if settings.leader_election
        else None
    )

    def status() -> dict[str, Any]:
        return {
            "version": __version__,
            "temporal": manager.status(),
            "kubernetes": {"watching": ready.is_set()},
            "leader": {
                "election": elector is not None,
                "leading": controller.leading,
                "holder": elector.holder if elector else None,
                "identity": elector.identity if elector else None,
            },
            "executions": controller.status(),
        }

    def readiness() -> tuple[bool, str]:
        # Ready once kopf's watches run; Temporal's state is data, not health.
        return (True, "watching") if ready.is_set() else (False, "starting")

    def liveness() -> tuple[bool, str]:
        stopped = controller.stopped_loops()
        return (False, f"stopped: {', '.join(stopped)}") if stopped else (True, "ok")

    http = await start_http(build_app(metrics, status, readiness, liveness), settings.http_port)
    log.info(
        "operator starting",
        extra={
            "version": __version__,
            "http_port": settings.http_port,
            "watch_namespaces": ",".join(settings.watch_namespaces) or "all",
            "leader_election": elector is not None,
            **manager.log_fields,
        },
    )
    campaign: asyncio.Task[None] | None = None
    try:
        async with manager:
            if elector is not None:
                campaign = asyncio.create_task(elector.run(), name="leader-election")
            else:
                await controller.start_leading()
            try:
                await kopf.operator(
                    registry=handlers.registry,
                    clusterwide=not settings.watch_namespaces,
                    namespaces=settings.watch_namespaces,
                    standalone=True,
                    memo=kopf.Memo(settings=settings, controller=controller),
                    stop_flag=stop,
                    ready_flag=ready,
                )
            finally:
                if campaign is not None:
                    campaign.cancel()
                    await asyncio.gather(campaign, return_exceptions=True)
                    await elector.release() if elector else None
                else:
                    await controller.stop_leading()
    finally:
        await http.cleanup()
        await kube.close()
        log.info("operator stopped")
