"""The runner process: serves runner task queues, and nothing else.

No kopf, no Kubernetes client and no Kubernetes credentials: only a Temporal
connection (the operator's resilient manager), the agents, and a small HTTP
server for probes and metrics. On SIGTERM (or ``GET /drain`` from inside
its pod: ``agentexec-operator runner --drain``, the chart's preStop hook) it
stops polling, lets agents in flight finish within
TEMPORAL_WORKER_GRACE_SECONDS, then cancels them: each is handed over, with
its checkpoint, as a disruption (RunnerShutdown) that another runner resumes
at once without spending the execution's backoffLimit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from aiohttp import web

from agentexec import __version__
from agentexec.http import build_app, liveness_of, start_http
from agentexec.metrics import Metrics
from agentexec.runner.activity import RunnerActivities
from agentexec.runner.api import HEARTBEAT_EVERY, Agent
from agentexec.runner.steps import StepActivities
from agentexec.settings import Settings
from agentexec.temporal.codec import build_codec
from agentexec.temporal.codec import describe as describe_codec
from agentexec.temporal.manager import TemporalManager, WorkerSpec
from agentexec.temporal.queues import worker_identity

log = logging.getLogger("agentexec.runner")


def build_runner_specs(settings: Settings, activities: RunnerActivities) -> list[WorkerSpec]:
    """One worker per queue, each running at most runner_max_concurrent agents."""
    return [
        WorkerSpec(
            task_queue=queue,
            # The single-call agent, and the agent loop's steps.
            activities=[activities.run_agent, *StepActivities.from_settings(settings).all()],
            max_concurrent_activities=settings.runner_max_concurrent,
            # A deleted execution stops its agent within seconds, not within
            # 0.8 x the heartbeat timeout (the SDK's throttle).
            heartbeat_throttle_seconds=HEARTBEAT_EVERY,
        )
        for queue in settings.runner_queues
    ]


def select_agents(settings: Settings, agents: Mapping[str, Agent]) -> dict[str, Agent]:
    """The agents AGENTEXEC_RUNNER_AGENTS names (all when it is empty)."""
    if not settings.runner_agents:
        return dict(agents)
    missing = [name for name in settings.runner_agents if name not in agents]
    if missing:
        known = ", ".join(sorted(agents)) or "none"
        raise ValueError(
            f"AGENTEXEC_RUNNER_AGENTS names agents that are not installed: "
            f"{', '.join(missing)} (installed: {known})"
        )
    return {name: agents[name] for name in settings.runner_agents}


def is_loopback(address: str | None) -> bool:
    """Whether a peer address is this host's own (IPv4, IPv6 or mapped)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


async def run_runner(
    settings: Settings, agents: Mapping[str, Agent], stop: asyncio.Event | None = None
) -> None:
    """Serve ``agents`` on the settings' runner queues until SIGTERM/SIGINT (or ``stop``)."""
    metrics = Metrics()
    activities = RunnerActivities(agents, metrics)
    identity = worker_identity(
        settings, "runner", f"{settings.pod_name or socket.gethostname()}:{os.getpid()}"
    )
    codec = build_codec(settings.payload_keys_dir, settings.payload_key_id)
    manager = TemporalManager(
        settings.temporal,
        build_runner_specs(settings, activities),
        metrics,
        identity=identity,
        payload_codec=codec,
    )
    stopping = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()

    drained = asyncio.Event()

    def request_stop(why: str) -> None:
        if not stopping.is_set():
            log.info(
                "stop requested: no new agents; agents in flight get the grace period",
                extra={
                    "signal": why,
                    "in_flight": activities.in_flight,
                    "grace_seconds": settings.temporal.worker_grace,
                },
            )
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig.name)

    async def drain(request: web.Request) -> web.Response:
        # The pod's preStop hook: the kubelet waits for the answer (within
        # terminationGracePeriodSeconds) before it sends SIGTERM, so the pod
        # ends once every agent finished or was handed over. Served to the
        # pod itself only: whoever reaches the port for metrics must not be
        # able to stop the runner taking agents.
        if not is_loopback(request.remote):
            return web.json_response(
                {"error": "/drain is served to the runner's own pod only (runner --drain)"},
                status=403,
            )
        request_stop("preStop")
        await drained.wait()
        return web.json_response({"drained": True})

    def status() -> dict[str, Any]:
        return {
            "version": __version__,
            "role": "runner",
            "identity": identity,
            "temporal": manager.status(),
            "runner": {
                "agents": sorted(agents),
                "task_queues": list(settings.runner_queues),
                "max_concurrent": settings.runner_max_concurrent,
                "in_flight": activities.in_flight,
                "stopping": stopping.is_set(),
            },
        }

    served_once = False

    def readiness() -> tuple[bool, str]:
        # Not ready until connected with every queue's worker started: a
        # rollout with a wrong Temporal address or TLS Secret then stalls on
        # its first new pod instead of replacing runners that work (agents
        # would wait, NoRunner). Once ready, a runner stays ready through later
        # Temporal outages: an outage hits every runner at once, and turning
        # them all unready only flaps the Service and the rollout; the manager
        # reconnects by itself. A draining runner takes no new agents.
        nonlocal served_once
        if stopping.is_set():
            return False, "stopping"
        if not served_once:
            if not manager.connected:
                return False, f"waiting for Temporal: {manager.unavailable()}"
            if manager.workers_running < len(settings.runner_queues):
                return False, "waiting for the workers to start"
            served_once = True
        return True, "serving"

    app = build_app(metrics, status, readiness, liveness_of(manager.stopped_loops))
    app.router.add_get("/drain", drain)
    http = await start_http(app, settings.http_port)
    log.info(
        "runner starting",
        extra={
            "version": __version__,
            "identity": identity,
            "http_port": settings.http_port,
            "agents": sorted(agents),
            "task_queues": list(settings.runner_queues),
            "max_concurrent": settings.runner_max_concurrent,
            "temporal_tls": settings.temporal.uses_tls,
            "temporal_api_key": settings.temporal.api_key_file is not None,
            **describe_codec(codec),
            **manager.log_fields,
        },
    )
    try:
        async with manager:
            await stopping.wait()
        # Leaving the manager shut the workers down: polling stopped first,
        # in-flight agents had the grace period, the rest were cancelled.
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        drained.set()
        await asyncio.sleep(0)  # let a waiting /drain answer before the server closes
        await http.cleanup()
        log.info("runner stopped", extra={"in_flight": activities.in_flight})


def exit_without_finalizing(code: int) -> NoReturn:
    """End a runner process whose serving has returned.

    The SDK core's threads may still be letting go of Python objects when
    `asyncio.run` returns: an interpreter finalizing under them aborts
    (SIGABRT, "PyGILState_Release ... finalizing"), which the tests saw in
    about one runner stop in four. Everything is drained and logged by then,
    so the process leaves without finalizing."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
