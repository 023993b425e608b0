"""/metrics, /statusz, /healthz on the operator's HTTP port, with a real manager."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from agentexec.http import build_app, liveness_of, start_http
from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.manager import TemporalManager
from localenv.procs import free_port
from localenv.temporal import TemporalDevServer
from tests.integration.conftest import StartManager
from tests.support.waiting import eventually


@pytest.fixture
async def served(temporal: TemporalDevServer) -> AsyncIterator[tuple[str, TemporalManager]]:
    manager = TemporalManager(TemporalSettings(address=temporal.address), (), Metrics())
    port = free_port()
    runner = await start_http(
        build_app(manager.metrics, manager.status, lambda: (True, "watching")), port, "127.0.0.1"
    )
    manager.start()
    try:
        yield f"http://127.0.0.1:{port}", manager
    finally:
        await manager.stop()
        await runner.cleanup()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def test_endpoints_report_temporal_state_as_data(
    served: tuple[str, TemporalManager], temporal: TemporalDevServer
) -> None:
    base, manager = served
    await eventually(lambda: manager.connected, what="connected")
    _, body = await get(f"{base}/metrics")
    labels = f'host_port="{temporal.address}",namespace="default"'
    assert f"temporal_connection_status{{{labels}}} 1.0" in body
    for name in (
        "temporal_reconnection_attempts_total",
        "temporal_connection_duration_seconds_bucket",
        "temporal_workers_running",
        "temporal_circuit_open",
        "temporal_health_probe_duration_seconds_bucket",
        "temporal_health_probe_failures_total",
    ):
        assert name in body

    temporal.kill()
    await eventually(lambda: not manager.connected, what="disconnected", timeout=10)
    # Liveness does not depend on Temporal: restarting the pod would not help.
    status, _ = await get(f"{base}/healthz")
    assert status == 200
    status, text = await get(f"{base}/statusz")
    assert status == 200
    assert '"connected": false' in text
    assert f'"address": "{temporal.address}"' in text
    assert '"last_error": "' in text
    _, body = await get(f"{base}/metrics")
    assert f"temporal_connection_status{{{labels}}} 0.0" in body


class Bug(BaseException):
    """What no loop survives: not an Exception (those are logged and retried)."""


async def test_healthz_names_a_manager_loop_or_worker_supervisor_that_died(
    temporal: TemporalDevServer, start_manager: StartManager, task_queue: str
) -> None:
    manager = start_manager(TemporalSettings(address=temporal.address))
    port = free_port()
    runner = await start_http(
        build_app(
            manager.metrics,
            manager.status,
            lambda: (True, "watching"),
            liveness_of(manager.stopped_loops),
        ),
        port,
        "127.0.0.1",
    )
    healthz = f"http://127.0.0.1:{port}/healthz"
    try:
        await eventually(lambda: manager.workers_running, what="worker running")
        assert (await get(healthz))[0] == 200

        # An error a loop survives: logged, retried, and liveness unaffected.
        connection = manager.connection
        probe_once = connection._probe_once
        failed = []

        async def fails_once() -> None:
            if not failed:
                failed.append(True)
                raise RuntimeError("a bug the loop survives")
            await probe_once()

        def probes() -> float:
            labels = {"host_port": temporal.address, "namespace": "default"}
            name = "temporal_health_probe_duration_seconds_count"
            return manager.metrics.registry.get_sample_value(name, labels) or 0.0

        connection._probe_once = fails_once  # type: ignore[method-assign]
        connection.report_failure()  # probe now
        await eventually(lambda: failed, what="the probe failed once")
        after_failure = probes()
        # The loop starts again after its backoff (about 1 s) and probes on.
        await eventually(probes, lambda n: n > after_failure, what="probing again", timeout=10)
        assert (await get(healthz))[0] == 200
        assert manager.stopped_loops() == []

        # The worker's supervisor dies: its next build raises what it cannot catch.
        supervised = manager.workers[0]

        def broken_build() -> None:
            raise Bug

        supervised._build = broken_build  # type: ignore[assignment,method-assign]
        assert supervised.worker is not None
        await supervised.worker.shutdown()  # run() returns: the supervisor rebuilds
        _, body = await eventually(
            lambda: get(healthz), lambda got: got[0] == 503, what="/healthz 503", timeout=15
        )
        assert f"worker:{task_queue}" in body, body

        # The probe loop dies too.
        async def dies() -> None:
            raise Bug

        connection._probe_once = dies  # type: ignore[method-assign]
        connection.report_failure()  # probe now
        await eventually(
            lambda: get(healthz),
            lambda got: "temporal-probe" in got[1],
            what="/healthz naming the probe",
        )
        assert manager.stopped_loops() == ["temporal-probe", f"worker:{task_queue}"]
    finally:
        await runner.cleanup()
