"""/healthz and the Lease campaign (issue #18, failure 11): a campaign that
dies leaves a replica that can never lead again, which liveness must say."""

from __future__ import annotations

import aiohttp
import kopf

from agentexec.http import build_app, liveness_of, start_http
from agentexec.kube import Kube
from agentexec.leader import LeaseElector
from agentexec.metrics import Metrics
from localenv.kube import ControlPlane
from localenv.procs import free_port
from tests.support.waiting import eventually


async def test_healthz_names_a_lease_campaign_that_died(
    control_plane: ControlPlane, namespace: str
) -> None:
    kube = Kube(
        kopf.ConnectionInfo(
            server=control_plane.url,
            ca_path=str(control_plane.ca_path),
            certificate_path=str(control_plane.admin.cert),
            private_key_path=str(control_plane.admin.key),
        )
    )
    started: list[bool] = []

    async def start_leading() -> None:
        started.append(True)
        raise RuntimeError("a bug in start_leading")

    async def stop_leading() -> None:
        return None

    elector = LeaseElector(
        kube, namespace, "liveness", "me", start_leading, stop_leading, retry_period=0.5
    )
    port = free_port()
    http = await start_http(
        build_app(Metrics(), dict, lambda: (True, "ok"), liveness_of(elector.stopped_loops)),
        port,
        "127.0.0.1",
    )

    async def healthz() -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            return resp.status, await resp.text()

    try:
        assert (await healthz())[0] == 200
        elector.start()
        status, body = await eventually(
            healthz, lambda got: got[0] == 503, what="/healthz 503", timeout=15
        )
        assert started == [True]  # it won the Lease, then its campaign died
        assert "leader-election" in body, (status, body)
        assert elector.stopped_loops() == ["leader-election"]
    finally:
        await elector.stop()
        await http.cleanup()
        await kube.close()
