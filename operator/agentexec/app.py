"""The operator process: one place that starts, and stops, every long-lived task."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

import kopf

from agentexec import handlers
from agentexec.http import build_app, start_http
from agentexec.metrics import Metrics
from agentexec.settings import Settings
from agentexec.temporal.manager import TemporalManager, WorkerSpec

log = logging.getLogger("agentexec")


def build_worker_specs(settings: Settings) -> Sequence[WorkerSpec]:
    """The workers this process runs (workflows and the built-in runner)."""
    return ()


async def run(settings: Settings) -> None:
    metrics = Metrics()
    manager = TemporalManager(settings.temporal, build_worker_specs(settings), metrics)
    ready = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def status() -> dict[str, Any]:
        return {"temporal": manager.status(), "kubernetes": {"watching": ready.is_set()}}

    def readiness() -> tuple[bool, str]:
        # Ready once kopf's watches run; Temporal's state is data, not health.
        return (True, "watching") if ready.is_set() else (False, "starting")

    runner = await start_http(build_app(metrics, status, readiness), settings.http_port)
    log.info("operator starting", extra={"http_port": settings.http_port, **manager.log_fields})
    try:
        async with manager:
            await kopf.operator(
                registry=handlers.registry,
                clusterwide=not settings.watch_namespaces,
                namespaces=settings.watch_namespaces,
                standalone=settings.peering is None,
                peering_name=settings.peering,
                memo=kopf.Memo(settings=settings, manager=manager, metrics=metrics),
                stop_flag=stop,
                ready_flag=ready,
            )
    finally:
        await runner.cleanup()
        log.info("operator stopped")
