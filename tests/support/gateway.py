"""Provider front ends for the chat agent's tests: an OpenAI-compatible
endpoint that authenticates as Azure OpenAI does (the key as is in an
``api-key`` header), over TLS with a certificate from a private CA, in front
of a real model server (llama.cpp's, localenv.openai_server), and a real
HTTP CONNECT proxy (proxy.py from PyPI) between the runner and it."""

from __future__ import annotations

import re
import ssl
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from localenv.pki import KeyPair
from localenv.procs import ManagedProcess, free_port, port_open, wait_for


class ApiKeyGateway:
    """HTTPS on ``host``; a request without the right ``api-key`` header is
    refused 401 with Azure's words, one carrying ``Authorization`` is refused
    too (so a client that sends the key as a Bearer token fails); the rest is
    forwarded to ``upstream`` with its own Bearer key."""

    def __init__(
        self,
        upstream_base_url: str,
        upstream_key: str | None,
        api_key: str,
        cert: KeyPair,
        host: str = "127.0.0.1",
        hostname: str = "localhost",
    ) -> None:
        self.upstream, self.upstream_key, self.api_key = upstream_base_url, upstream_key, api_key
        self.cert, self.host, self.hostname = cert, host, hostname
        self.port = 0
        self.served = 0
        self.refused = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"https://{self.hostname}:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert.cert, self.cert.key)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        if request.headers.get("api-key") != self.api_key or "Authorization" in request.headers:
            self.refused += 1
            return web.json_response(
                {"error": {"code": "401", "message": "Access denied due to invalid subscription "
                           "key or wrong API endpoint."}},
                status=401,
            )  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if self.upstream_key:
            headers["Authorization"] = f"Bearer {self.upstream_key}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.upstream}/chat/completions", data=await request.read(), headers=headers
            ) as answer,
        ):
            body = await answer.read()
            self.served += 1
            # As Azure does: a streamed answer stays an event stream.
            kind = answer.headers.get("Content-Type", "application/json").split(";")[0]
            return web.Response(body=body, status=answer.status, content_type=kind)


class ConnectProxy:
    """proxy.py (PyPI `proxy.py`, abhinavsingh/proxy.py), a well-kept HTTP
    proxy that tunnels HTTPS with CONNECT, as a process on a loopback port
    (or ``host``), with basic authentication when ``credentials`` are given."""

    def __init__(
        self, workdir: Path, credentials: str | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.host, self.port, self.credentials = host, free_port(), credentials
        self.log_path = workdir / "proxy.log"
        argv = [
            sys.executable, "-m", "proxy",
            "--hostname", host, "--port", str(self.port),
            "--num-workers", "1", "--num-acceptors", "1",
            "--log-file", str(self.log_path), "--log-level", "INFO",
        ]  # fmt: skip
        if credentials:
            argv += ["--basic-auth", credentials]
        self._proc = ManagedProcess("proxy", argv, workdir / "proxy.out")

    @property
    def url(self) -> str:
        auth = f"{self.credentials}@" if self.credentials else ""
        return f"http://{auth}{self.host}:{self.port}"

    def start(self) -> None:
        self._proc.start()
        wait_for(lambda: port_open(self.port, self.host), 30, "proxy.py listening")

    def stop(self) -> None:
        self._proc.stop(grace=5)

    def tunnels(self, at_least: int = 0, timeout: float = 10) -> list[str]:
        """The host:port of each CONNECT it tunnelled, from its access log
        (written when a tunnel closes: waits for ``at_least`` of them)."""

        def logged() -> list[str]:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            return [t for t in re.findall(r" - CONNECT (\S+) - ", text) if t != "None:None"]

        if at_least:
            wait_for(lambda: len(logged()) >= at_least, timeout, f"{at_least} tunnels logged")
        return logged()
