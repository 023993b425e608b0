"""/metrics, /statusz, /healthz on the operator's HTTP port, with a real manager."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agentexec.http import build_app, build_secure_app, build_server_tls, liveness_of, start_http
from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.manager import TemporalManager
from localenv.pki import CertificateAuthority
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


async def peer_certificate(port: int, ca: Path, host: str) -> bytes:
    """The DER certificate the server presents to a client verifying it
    against ``ca`` and connecting to ``host`` (an IP address: no SNI sent)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_the_secure_port_serves_a_renewed_certificate_without_a_restart(
    tmp_path: Path,
) -> None:
    """metrics.secure.certSecret (cert-manager renews it in place): each new
    handshake, with SNI or without, gets the certificate the files hold now."""
    ca = CertificateAuthority(tmp_path / "pki")
    first = ca.issue("first", "localhost", server_hosts=("localhost", "127.0.0.1"))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(first.cert, cert)
    shutil.copy(first.key, key)
    port = free_port()

    async def allow(token: str, path: str) -> tuple[int, str]:
        return (200, "ok") if token == "good" else (401, "no")

    metrics = Metrics()
    runner = await start_http(
        build_secure_app(metrics, lambda: {"ok": True}, allow), port, "127.0.0.1",
        ssl_context=build_server_tls(cert, key),
    )  # fmt: skip
    try:
        for host in ("127.0.0.1", "localhost"):
            assert await peer_certificate(port, ca.cert_path, host) == pem_to_der(first.cert)
        second = ca.issue("second", "localhost", server_hosts=("localhost", "127.0.0.1"))
        shutil.copy(second.key, key)  # a half-done rotation keeps the last good pair
        assert await peer_certificate(port, ca.cert_path, "127.0.0.1") == pem_to_der(first.cert)
        shutil.copy(second.cert, cert)
        for host in ("127.0.0.1", "localhost"):
            assert await peer_certificate(port, ca.cert_path, host) == pem_to_der(second.cert)
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        async with aiohttp.ClientSession() as session:
            url = f"https://localhost:{port}/metrics"
            async with session.get(url, ssl=context) as refused:
                assert refused.status == 401
            async with session.get(
                url, ssl=context, headers={"Authorization": "Bearer good"}
            ) as served:
                assert served.status == 200
                assert "agentexec_build_info" in await served.text()
    finally:
        await runner.cleanup()


def pem_to_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


async def test_without_certificate_files_the_secure_port_makes_its_own() -> None:
    port = free_port()

    async def allow(token: str, path: str) -> tuple[int, str]:
        return 200, "ok"

    runner = await start_http(
        build_secure_app(Metrics(), dict, allow), port, "127.0.0.1",
        ssl_context=build_server_tls(None, None),
    )  # fmt: skip
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"https://127.0.0.1:{port}/statusz", ssl=False,
                headers={"Authorization": "Bearer any"},
            ) as answer,
        ):  # fmt: skip
            assert answer.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with aiohttp.ClientSession() as session:
                await session.get(f"https://127.0.0.1:{port}/statusz")
    finally:
        await runner.cleanup()


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
