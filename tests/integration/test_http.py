"""/metrics, /statusz, /healthz on the operator's HTTP port, with a real manager."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from agentexec.http import build_app, start_http
from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.manager import TemporalManager
from localenv.procs import free_port
from localenv.temporal import TemporalDevServer
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
