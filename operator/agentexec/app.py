"""The operator process: one place that starts, and stops, every long-lived task."""

from __future__ import annotations

import asyncio
import dataclasses
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
from agentexec.http import build_app, build_secure_app, build_server_tls, liveness_of, start_http
from agentexec.kube import Kube, TokenAuthorizer
from agentexec.leader import LeaseElector
from agentexec.metrics import Metrics
from agentexec.settings import Settings
from agentexec.temporal.codec import build_codec
from agentexec.temporal.codec import describe as describe_codec
from agentexec.temporal.loop import AgentLoopWorkflow
from agentexec.temporal.manager import TemporalManager, WorkerSpec
from agentexec.temporal.queues import PollerCheck, worker_identity
from agentexec.temporal.runner_check import check_runner
from agentexec.temporal.workflows import AgentExecutionWorkflow

log = logging.getLogger("agentexec")
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def build_worker_specs(settings: Settings, controller: Controller) -> Sequence[WorkerSpec]:
    """The operator's workflow worker, and the in-process runner when enabled
    (AGENTEXEC_RUNNER_ENABLED; off by default: `agentexec-operator runner` runs
    agents in their own process)."""
    specs = [
        WorkerSpec(
            task_queue=settings.task_queue,
            workflows=[AgentExecutionWorkflow, AgentLoopWorkflow],
            # check_runner: the workflow's look at a runner queue (NoRunner).
            activities=[controller.report_status, check_runner],
            # Each cached run holds a sandbox; the SDK default (1000) alone
            # would cost more memory than the rest of the operator.
            max_cached_workflows=200,
        )
    ]
    # Workflows still running on a queue the install used before (an upgrade
    # that changed task_queue) finish there; nothing new is started on it.
    specs += [
        dataclasses.replace(specs[0], task_queue=queue)
        for queue in settings.drain_task_queues
        if queue != settings.task_queue
    ]
    if settings.runner_enabled:
        # Imported only for it: the runner's tools (the mcp SDK) cost an
        # operator without one ~30 MB and half a second of start-up.
        from agentexec.runner import configure_agents, load_agents
        from agentexec.runner.activity import RunnerActivities
        from agentexec.runner.api import HEARTBEAT_EVERY
        from agentexec.runner.steps import StepActivities

        agents = load_agents()
        configure_agents(agents, settings)
        log.info(
            "built-in runner",
            extra={"agents": sorted(agents), "task_queue": settings.runner_task_queue},
        )
        specs.append(
            WorkerSpec(
                task_queue=settings.runner_task_queue,
                activities=[
                    RunnerActivities(agents).run_agent,
                    *StepActivities.from_settings(settings).all(),
                ],
                max_concurrent_activities=settings.runner_max_concurrent,
                heartbeat_throttle_seconds=HEARTBEAT_EVERY,
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


async def _first(*awaitables: Any) -> None:
    """Wait until the first of ``awaitables`` is done (tasks given are not cancelled)."""
    tasks = [a if isinstance(a, asyncio.Future) else asyncio.ensure_future(a) for a in awaitables]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task, given in zip(tasks, awaitables, strict=True):
        if task is not given and not task.done():
            task.cancel()


async def run(settings: Settings) -> None:
    metrics = Metrics()
    codec = build_codec(settings.payload_keys_dir, settings.payload_key_id)
    kube = await Kube.connect()
    manager = TemporalManager(
        settings.temporal,
        (),
        metrics,
        identity=worker_identity(settings, "operator", identity(settings)),
        payload_codec=codec,
    )
    controller = Controller(settings, manager, kube, metrics)
    manager.set_workers(build_worker_specs(settings, controller))
    ready = asyncio.Event()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(sig: signal.Signals) -> None:
        if not stopping.is_set():
            log.info("stop requested: handing over, draining workers", extra={"signal": sig.name})
        stopping.set()

    def take_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, request_stop, sig)

    take_signals()
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

    # Every supervised loop of the process: the controller's, the manager's
    # (connection, probe, settings, worker supervisors) and the Lease campaign.
    loops = [controller.stopped_loops, manager.stopped_loops]
    if elector is not None:
        loops.append(elector.stopped_loops)
    secure = settings.metrics_secure
    http = await start_http(
        build_app(metrics, status, readiness, liveness_of(*loops), with_data=not secure),
        settings.http_port,
    )
    secure_http = (
        await start_http(
            build_secure_app(metrics, status, TokenAuthorizer(kube)),
            settings.metrics_port,
            ssl_context=build_server_tls(settings.metrics_cert_file, settings.metrics_key_file),
        )
        if secure
        else None
    )
    log.info(
        "operator starting",
        extra={
            "version": __version__,
            "http_port": settings.http_port,
            # /metrics and /statusz: HTTPS with a reviewed token on this port, or plain.
            "metrics_port": settings.metrics_port if secure else settings.http_port,
            "metrics_secure": secure,
            "watch_namespaces": ",".join(settings.watch_namespaces) or "all",
            "leader_election": elector is not None,
            # Whether TLS and an API key are in use; never the key itself.
            "temporal_tls": settings.temporal.uses_tls,
            "temporal_api_key": settings.temporal.api_key_file is not None,
            "install": settings.install,
            **describe_codec(codec),
            **manager.log_fields,
        },
    )
    kopf_stop = asyncio.Event()
    unhook = handlers.hook_listings(controller.on_listed)
    try:
        async with manager:
            # Another install polling our queues would take our tasks: said at start.
            pollers = asyncio.create_task(
                PollerCheck(manager, settings, metrics).run(), name="poller-check"
            )
            if elector is not None:
                elector.start()
            else:
                await controller.start_leading()
            watching = asyncio.create_task(
                kopf.operator(
                    registry=handlers.registry,
                    clusterwide=not settings.watch_namespaces,
                    namespaces=settings.watch_namespaces,
                    standalone=True,
                    memo=kopf.Memo(settings=settings, controller=controller),
                    memories=handlers.Unremembered(),
                    stop_flag=kopf_stop,
                    ready_flag=ready,
                ),
                name="kopf",
            )
            # kopf installs its own SIGINT/SIGTERM handlers as it starts, and on
            # a signal cancels every task it did not start with (ours included,
            # without the Lease ever being released). Take the signals back once
            # it runs, so a stop hands over first and stops kopf last.
            await _first(ready.wait(), watching)
            take_signals()
            await _first(stopping.wait(), watching)
            # 1. Stop reconciling and release the Lease: a successor starts now.
            if elector is not None:
                await elector.stop()
                await elector.release()
            else:
                await controller.stop_leading()
            pollers.cancel()
            await asyncio.gather(pollers, return_exceptions=True)
        # 2. Leaving the manager drains the workers (in-flight activities get
        #    TEMPORAL_WORKER_GRACE_SECONDS). 3. Then kopf stops watching.
        kopf_stop.set()
        try:
            await watching
        except Exception as exc:
            log.warning("kopf stopped with an error", extra={"error": str(exc)[:300]})
    finally:
        unhook()
        await http.cleanup()
        if secure_http is not None:
            await secure_http.cleanup()
        await kube.close()
        log.info("operator stopped")
