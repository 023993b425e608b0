"""The operator's own HTTP endpoints: /metrics, /statusz, /healthz, /readyz.

Liveness never depends on Temporal: restarting the pod does not bring
Temporal back. It fails only when a background loop that should run has
stopped (a bug that a restart does cure).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentexec.metrics import Metrics

StatusFn = Callable[[], dict[str, Any]]
ReadyFn = Callable[[], tuple[bool, str]]


def liveness_of(*stopped_loops: Callable[[], list[str]]) -> ReadyFn:
    """/healthz from a process's supervised loops (each source lists those of
    its loops that stopped): unhealthy, naming them, once any has stopped."""

    def alive() -> tuple[bool, str]:
        stopped = [name for source in stopped_loops for name in source()]
        return (False, f"stopped: {', '.join(stopped)}") if stopped else (True, "ok")

    return alive


def build_app(
    metrics: Metrics, status: StatusFn, ready: ReadyFn, alive: ReadyFn | None = None
) -> web.Application:
    started = time.time()

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def statusz(_: web.Request) -> web.Response:
        return web.json_response(status(), dumps=_dumps)

    async def healthz(_: web.Request) -> web.Response:
        ok, why = alive() if alive is not None else (True, "ok")
        return web.json_response(
            {"status": "ok" if ok else why, "uptime_seconds": round(time.time() - started)},
            status=200 if ok else 503,
        )

    async def readyz(_: web.Request) -> web.Response:
        ok, why = ready()
        return web.json_response({"ready": ok, "reason": why}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/statusz", statusz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


async def start_http(app: web.Application, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
