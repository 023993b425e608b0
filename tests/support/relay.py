"""A TCP relay of our own between the operator and Temporal, for blackholes.

``blackhole()`` stops forwarding in both directions without closing any
socket (packets "dropped", no reset); ``restore()`` resumes forwarding.
``mute_answers()`` forwards requests but none of the answers: a call reaches
the server and does what it asks, and the caller never hears so.
``freeze_existing()`` blackholes only the connections open now, while new
ones pass: a client whose connection hangs while a fresh dial works.

:class:`ModelRelay` is an HTTP relay in front of the real model server:
rate limits and a throttled stream, as providers have them.

:class:`TlsRelay` terminates TLS (ALPN h2, optionally requiring a client
certificate) in front of the plaintext dev server, so the client's real TLS
stack is what the tests exercise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web


class TcpRelay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._flowing = asyncio.Event()  # for connections accepted from now on
        self._flowing.set()
        self._answering = asyncio.Event()  # server -> client, for connections from now on
        self._answering.set()
        self._connections: list[asyncio.Event] = []
        self._answers: list[asyncio.Event] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, ssl=self._server_ssl()
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _server_ssl(self) -> ssl.SSLContext | None:
        return None

    def blackhole(self) -> None:
        self._flowing.clear()
        for flowing in self._connections:
            flowing.clear()

    def mute_answers(self) -> None:
        self._answering.clear()
        for answering in self._answers:
            answering.clear()

    def freeze_existing(self) -> None:
        for flowing in self._connections:
            flowing.clear()

    def restore(self) -> None:
        self._flowing.set()
        self._answering.set()
        for event in (*self._connections, *self._answers):
            event.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # While blackholed, new connections are accepted and then hang too.
        await self._flowing.wait()
        try:
            up_reader, up_writer = await self._open_upstream()
        except OSError:
            writer.close()
            return
        flowing = asyncio.Event()
        flowing.set()
        self._connections.append(flowing)
        answering = asyncio.Event()
        if self._answering.is_set():
            answering.set()
        self._answers.append(answering)
        self._writers |= {writer, up_writer}
        for src, dst, gates in (
            (reader, up_writer, (flowing,)),
            (up_reader, writer, (flowing, answering)),
        ):
            task = asyncio.create_task(self._pump(src, dst, *gates))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.upstream)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *gates: asyncio.Event
    ) -> None:
        try:
            while data := await src.read(65536):
                for gate in gates:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()
            self._writers.discard(dst)


class TlsRelay(TcpRelay):
    """TLS on the client side, plaintext to the dev server.

    ``client_ca`` set: a client certificate signed by it is required (mTLS).
    The peer certificates seen are kept, newest last, in ``client_certs``.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
    ) -> None:
        super().__init__(upstream_host, upstream_port)
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.client_certs: list[bytes] = []
        self.handshake_failures = 0

    def _server_ssl(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        context.set_alpn_protocols(["h2"])  # gRPC needs HTTP/2 negotiated
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.client_ca)
        return context

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("ssl_object")
        if peer is not None:
            der = peer.getpeercert(binary_form=True)
            if der:
                self.client_certs.append(der)
        await super()._accept(reader, writer)


class ModelRelay:
    """An HTTP relay in front of a real OpenAI-compatible server, acting out
    what providers do: answer 429 with ``Retry-After`` for the first
    ``rate_limited`` requests (or ``refuse_status``, e.g. 400, with an
    OpenAI-style error), then pass each request on and stream the real
    answer back, ``event_delay`` seconds per server-sent event (a throttled,
    slow model). Counts what it was sent in ``requests``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        rate_limited: int = 0,
        retry_after: int = 1,
        event_delay: float = 0,
        refuse_status: int = 429,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.rate_limited = rate_limited
        self.retry_after = retry_after
        self.event_delay = event_delay
        self.refuse_status = refuse_status
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if self.requests <= self.rate_limited:
            if self.refuse_status != 429:
                return web.json_response(
                    {"error": {"message": "Invalid request: refused", "type": "invalid"}},
                    status=self.refuse_status,
                )
            return web.json_response(
                {"error": {"message": "Rate limit reached, retry later", "type": "requests"}},
                status=429,
                headers={"Retry-After": str(self.retry_after)},
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARDED}
        async with self._session.post(
            f"{self.upstream}/chat/completions", data=body, headers=headers
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            pending = b""
            async for chunk in upstream.content.iter_any():
                pending += chunk
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    if self.event_delay:
                        await asyncio.sleep(self.event_delay)
                    await response.write(event + b"\n\n")
            if pending:
                await response.write(pending)
            await response.write_eof()
            return response


FORWARDED = {"content-type", "authorization"}
