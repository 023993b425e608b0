"""The operator's own HTTP endpoints: /metrics, /statusz, /healthz, /readyz.

Liveness never depends on Temporal: restarting the pod does not bring
Temporal back. It fails only when a background loop that should run has
stopped (a bug that a restart does cure).

With secure metrics (AGENTEXEC_METRICS_SECURE), /metrics and /statusz move to
an HTTPS port of their own and answer only callers whose bearer token the
``authorize`` function accepts (the operator asks the API server: TokenReview
and SubjectAccessReview, as controller-runtime's secure metrics server does);
the plain port keeps /healthz and /readyz for the kubelet, which sends no token.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agentexec.metrics import Metrics

StatusFn = Callable[[], dict[str, Any]]
ReadyFn = Callable[[], tuple[bool, str]]
# (bearer token, path) -> (HTTP status, why): 200 to serve, 401 or 403 not to,
# 503 when the answer cannot be had now.
AuthorizeFn = Callable[[str, str], Awaitable[tuple[int, str]]]

log = logging.getLogger("agentexec.http")


def liveness_of(*stopped_loops: Callable[[], list[str]]) -> ReadyFn:
    """/healthz from a process's supervised loops (each source lists those of
    its loops that stopped): unhealthy, naming them, once any has stopped."""

    def alive() -> tuple[bool, str]:
        stopped = [name for source in stopped_loops for name in source()]
        return (False, f"stopped: {', '.join(stopped)}") if stopped else (True, "ok")

    return alive


def _data_routes(app: web.Application, metrics: Metrics, status: StatusFn) -> None:
    """/metrics and /statusz."""

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def statusz(_: web.Request) -> web.Response:
        return web.json_response(status(), dumps=_dumps)

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/statusz", statusz)


def build_app(
    metrics: Metrics,
    status: StatusFn,
    ready: ReadyFn,
    alive: ReadyFn | None = None,
    *,
    with_data: bool = True,
) -> web.Application:
    """The plain HTTP port: /healthz and /readyz, and /metrics and /statusz
    unless they are served securely (``with_data=False``)."""
    started = time.time()

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
    if with_data:
        _data_routes(app, metrics, status)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def build_secure_app(metrics: Metrics, status: StatusFn, authorize: AuthorizeFn) -> web.Application:
    """/metrics and /statusz for callers ``authorize`` lets in (see the module doc)."""

    @web.middleware
    async def bearer_only(request: web.Request, handler: Any) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            code, why = 401, "a bearer token is required"
        else:
            code, why = await authorize(token.strip(), request.path)
        if code == 200:
            response: web.StreamResponse = await handler(request)
            return response
        headers = {"WWW-Authenticate": 'Bearer realm="agentexec-operator"'} if code == 401 else {}
        return web.json_response({"error": why}, status=code, headers=headers)

    app = web.Application(middlewares=[bearer_only])
    _data_routes(app, metrics, status)
    return app


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


async def start_http(
    app: web.Application,
    port: int,
    host: str = "0.0.0.0",
    ssl_context: ssl.SSLContext | None = None,
) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner


def build_server_tls(cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """The secure port's TLS: the given certificate, loaded again when its
    files change (checked at each handshake: a renewed cert-manager Secret
    applies without a restart), or a self-signed one made now (as
    controller-runtime's metrics server does without a certificate)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is None or key_file is None:
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = _self_signed(Path(tmp))
            context.load_cert_chain(cert, key)
        return context
    context.load_cert_chain(cert_file, key_file)
    seen = [_stamp(cert_file, key_file)]
    current = [context]

    def reload_if_changed(sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        stamp = _stamp(cert_file, key_file)
        if stamp != seen[0]:
            fresh = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            fresh.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                fresh.load_cert_chain(cert_file, key_file)
            except (OSError, ssl.SSLError) as exc:  # mid-rotation: keep the last good one
                log.warning("cannot load the metrics certificate", extra={"error": str(exc)})
                return
            seen[0], current[0] = stamp, fresh
            log.info("metrics certificate changed; serving the new one")
        if current[0] is not context:
            sock.context = current[0]

    context.sni_callback = reload_if_changed
    return context


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    stamps = []
    for path in paths:
        try:
            st = path.stat()
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            stamps.append((0, 0, 0))
    return tuple(stamps)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    # cryptography only here: nothing else of the operator needs it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    loopback = ipaddress.ip_address("127.0.0.1")
    names = [x509.DNSName(host), x509.DNSName("localhost"), x509.IPAddress(loopback)]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
