"""A remote codec server (Temporal's protocol) for reading encrypted histories.

``POST /decode`` and ``POST /encode`` take and return ``{"payloads": [...]}``
in protobuf's JSON form, as the ``temporal`` CLI (``--codec-endpoint``) and
the Temporal UI (its codec endpoint setting) send them. Run it where the keys
are, for whoever may read the histories: it decrypts whatever it is sent.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from agentexec.temporal.codec import EncryptionCodec, KeyNotFound

log = logging.getLogger("agentexec.codec")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_codec_app(
    codec: EncryptionCodec, allow_origins: Sequence[str] = (), token: str | None = None
) -> web.Application:
    origins = set(allow_origins)

    def cors(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = (
                "Content-Type, Authorization, X-Namespace"
            )
            response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    def endpoint(transform: Callable[[Payloads], Payloads]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.method == "OPTIONS":
                return cors(request, web.Response(status=204))
            if token is not None and not hmac.compare_digest(
                request.headers.get("Authorization", ""), f"Bearer {token}"
            ):
                return cors(request, web.Response(status=401, text="unauthorized\n"))
            try:
                payloads = json_format.Parse(await request.text(), Payloads())
                out = transform(payloads)
            except json_format.ParseError as exc:
                return cors(request, web.Response(status=400, text=f"bad payloads: {exc}\n"))
            except KeyNotFound as exc:
                return cors(request, web.Response(status=422, text=f"{exc}\n"))
            return cors(
                request,
                web.Response(
                    text=json_format.MessageToJson(out, indent=None),
                    content_type="application/json",
                ),
            )

        return handle

    def decode(payloads: Payloads) -> Payloads:
        return Payloads(payloads=[codec.decrypt(p) for p in payloads.payloads])

    def encode(payloads: Payloads) -> Payloads:
        return Payloads(payloads=[codec.encrypt(p) for p in payloads.payloads])

    app = web.Application()
    for path, transform in (("/decode", decode), ("/encode", encode)):
        app.router.add_route("POST", path, endpoint(transform))
        app.router.add_route("OPTIONS", path, endpoint(transform))
    return app


async def serve_codec(
    codec: EncryptionCodec,
    host: str,
    port: int,
    allow_origins: Sequence[str] = (),
    token: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until cancelled (Ctrl-C) or ``stop`` is set."""
    runner = web.AppRunner(build_codec_app(codec, allow_origins, token), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info(
            "codec server listening",
            extra={"address": f"{host}:{port}", "keys": codec.keys.ids, "auth": token is not None},
        )
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
