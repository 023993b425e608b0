"""Tools from MCP servers, as the agent loop's activities call them.

The ``mcp`` SDK's client over Streamable HTTP: one connection per call (an
activity may run on any runner, and a connection kept between steps would not
survive a runner's restart anyway). A server that cannot be reached, times
out or breaks the protocol raises a retryable ``ToolServerError``; a tool
that ran and failed (``isError``), or that the server refused (unknown tool,
bad arguments), is a result the model is told about.

Servers that need credentials are configured on the runners, as model
providers are: an MCP servers file (YAML or JSON; its path in
``AGENTEXEC_MCP_SERVERS_FILE``) names each one's URL and headers, whose
values may come from files mounted from Secrets::

    servers:
      github:
        url: https://mcp.example.com/mcp
        headers: {X-Team: agents}
        headerFiles:
          Authorization: /var/run/agentexec/mcp/github/authorization  # "Bearer ..."

An Agent names one with ``spec.tools[].configuredServer``. The URL comes
from the file too, so an Agent cannot send a server's credentials anywhere
else; header files are read at each call (a rotated Secret applies when the
kubelet updates the mount) and never enter a request to Temporal, a status
or a log. Calls go through HTTPS_PROXY/HTTP_PROXY unless NO_PROXY names the
host, as providers' do.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types import RequestParamsMeta
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.runner.api import AgentFailed
from agentexec.runner.config import config_entries, read_config_file
from agentexec.runner.providers import proxy_for
from agentexec.settings import ProxySettings
from agentexec.temporal.steps import TOOL_SERVER_ERROR, Tool, ToolCallResult, ToolServer

log = logging.getLogger("agentexec.runner.tools")
MCP_SERVERS_FILE_ENV = "AGENTEXEC_MCP_SERVERS_FILE"
SERVER_FIELDS = frozenset({"url", "headers", "headerFiles"})

# The request _meta key naming one tool call of one execution (see call_tool).
CALL_KEY_META = "agentexec.io/call"
# What one tool result may add to the conversation (and to the history).
MAX_RESULT_CHARS = 16 * 1024
# What the mcp client imports inside call_tool (mcp/client/session.py,
# validate_tool_result): jsonschema, to check a result against the tool's
# output schema. See preload_client.
_IMPORTED_BY_CALL_TOOL = ("jsonschema", "jsonschema.validators", "referencing.exceptions")


def preload_client() -> None:
    """Import now what the mcp client would import in its first call_tool.

    The client imports jsonschema inside call_tool (made lazy for mcp's own
    import time: modelcontextprotocol/python-sdk#1596). That import is about
    a second of CPU (more on a busy node) on the runner's event loop, in the
    middle of a step: the step's heartbeats and its completion wait, and so
    does every other activity of the runner. A step with a short heartbeat
    timeout was timed out by the server while it was done, and its tool
    called a second time. Runners call this when they are built, before
    they poll.
    """
    for name in _IMPORTED_BY_CALL_TOOL:
        # A later mcp that no longer uses it has nothing to preload.
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(name)


class McpConfigError(ValueError):
    """The MCP servers file, or a server in it, cannot be used as written."""


@dataclass(frozen=True)
class ServerConfig:
    """One server of the MCP servers file."""

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    header_files: Mapping[str, Path] = field(default_factory=dict)

    def read_headers(self) -> dict[str, str]:
        """The headers, with the values of the mounted files as they are now."""
        out = dict(self.headers)
        for header, path in self.header_files.items():
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise McpConfigError(
                    f"MCP server {self.name!r}: cannot read headerFiles[{header!r}] "
                    f"{str(path)!r} ({exc.strerror or type(exc).__name__}); is its Secret mounted?"
                ) from None
            if not value:
                raise McpConfigError(
                    f"MCP server {self.name!r}: headerFiles[{header!r}] {str(path)!r} is empty"
                )
            out[header] = value
        return out


def parse_servers(data: Any, source: str = "the MCP servers file") -> dict[str, ServerConfig]:
    """The servers a decoded MCP servers file names; McpConfigError says what is wrong."""
    servers: dict[str, ServerConfig] = {}
    for name, entry, where in config_entries(
        data, "servers", "server", SERVER_FIELDS, source, McpConfigError
    ):
        url = entry.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise McpConfigError(f"{where}: url must be an http(s) URL")
        maps = {}
        for key in ("headers", "headerFiles"):
            value = entry.get(key) or {}
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
            ):
                raise McpConfigError(f"{where}: {key} must map header names to strings")
            maps[key] = dict(value)
        both = {h.lower() for h in maps["headers"]} & {h.lower() for h in maps["headerFiles"]}
        if both:
            raise McpConfigError(f"{where}: {sorted(both)} set in both headers and headerFiles")
        servers[name] = ServerConfig(
            name=name,
            url=url,
            headers=maps["headers"],
            header_files={k: Path(v) for k, v in maps["headerFiles"].items()},
        )
    return servers


def load_servers(path: Path) -> dict[str, ServerConfig]:
    """Read and parse the MCP servers file (YAML, or JSON, which is YAML too)."""
    data = read_config_file(path, "the MCP servers file", McpConfigError)
    return parse_servers(data, f"the MCP servers file {str(path)!r}")


@dataclass(frozen=True)
class Endpoint:
    """Where a step's MCP server is reached, and how: what a call needs."""

    server: ToolServer
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    proxy: str | None = None


class McpServers:
    """The runner's MCP servers file (read again at each call, as the
    providers file is) and its proxy settings."""

    def __init__(self, path: Path | None = None, proxies: ProxySettings | None = None) -> None:
        self.path = path
        self.proxies = proxies

    def resolve(self, server: ToolServer) -> Endpoint:
        """The endpoint of ``server``: its URL, or the configured server it
        names. AgentFailed when that cannot be used (retrying cannot help)."""
        url, headers = server.url, {}
        if server.configured:
            if self.path is None:
                raise AgentFailed(
                    f"tool server {server.name!r} names configured server "
                    f"{server.configured!r}, but this runner has no MCP servers file "
                    f"({MCP_SERVERS_FILE_ENV})"
                )
            try:
                known = load_servers(self.path)
                config = known.get(server.configured)
                if config is None:
                    raise McpConfigError(
                        f"no MCP server named {server.configured!r} in the runner's MCP servers "
                        f"file (configured: {', '.join(sorted(known)) or 'none'})"
                    )
                url, headers = config.url, config.read_headers()
            except McpConfigError as exc:
                raise AgentFailed(str(exc)) from None
        return Endpoint(replace(server, url=url), url, headers, proxy_for(url, self.proxies))

    def configure(self) -> None:
        """Check the file once, when the runner starts: one that cannot be read
        or parsed stops it (McpConfigError, naming the file), as a malformed
        providers file does; a header file not mounted yet is a warning only."""
        if self.path is None:
            return
        servers = load_servers(self.path)
        for problem in _header_problems(servers):
            log.warning("%s (its tool calls fail until it is there)", problem)
        log.info(
            "MCP servers",
            extra={"mcp_servers_file": str(self.path), "servers": sorted(servers)},
        )

    def check(self) -> list[str]:
        """For --check-config: the file's problems and its unreadable header files."""
        if self.path is None:
            return []
        try:
            return _header_problems(load_servers(self.path))
        except McpConfigError as exc:
            return [str(exc)]


def _header_problems(servers: Mapping[str, ServerConfig]) -> list[str]:
    problems = []
    for config in servers.values():
        try:
            config.read_headers()
        except McpConfigError as exc:
            problems.append(str(exc))
    return problems


def _http(endpoint: Endpoint) -> httpx2.AsyncClient:
    # The environment is not consulted: the settings already said which proxy.
    return httpx2.AsyncClient(
        timeout=endpoint.server.timeout_seconds,
        headers=dict(endpoint.headers),
        proxy=endpoint.proxy,
        trust_env=False,
    )


def _client(server: ToolServer, http: httpx2.AsyncClient) -> Client:
    return Client(
        streamable_http_client(server.url, http_client=http),
        read_timeout_seconds=float(server.timeout_seconds),
        cache=None,  # every listing from the server as it is now
    )


def _unreachable(endpoint: Endpoint, exc: BaseException) -> ApplicationError:
    server = endpoint.server
    text = f"MCP server {server.name!r} at {server.url}: {type(exc).__name__}: {exc}"
    for value in endpoint.headers.values():  # a server may echo a credential
        if len(value) >= 4:
            text = text.replace(value, "[REDACTED]")
    return ApplicationError(
        text[:1000],
        type=TOOL_SERVER_ERROR,
        category=ApplicationErrorCategory.BENIGN,
    )


def _errors(exc: BaseException) -> Iterable[BaseException]:
    """An exception and, for an exception group (anyio's task groups), its leaves."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _errors(inner)
    else:
        yield exc


def build_tools(server: ToolServer, listed: Iterable[Any]) -> list[Tool]:
    """The tools ``server`` lists that its ``allow`` lets through, as the model sees them."""
    allowed = set(server.allow)
    return [
        Tool(
            server=server.name,
            name=t.name,
            description=(t.description or "")[:1024],
            parameters=dict(t.input_schema or {"type": "object"}),
        )
        for t in listed
        if not allowed or t.name in allowed
    ]


async def list_tools(endpoint: Endpoint) -> list[Tool]:
    server = endpoint.server
    tools: list[Any] = []
    try:
        async with _http(endpoint) as http, _client(server, http) as client:
            cursor: str | None = None
            for _ in range(100):  # a server that pages forever cannot hang the step
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
    except MCPError as exc:
        raise _unreachable(endpoint, exc) from None
    except Exception as exc:
        raise _unreachable(endpoint, next(iter(_errors(exc)))) from None
    return build_tools(server, tools)


def build_result_text(content: Iterable[Any], structured: Any = None) -> str:
    """A tool result's content as the text the model reads, bounded."""
    parts: list[str] = []
    for block in content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(str(getattr(block, "text", "")))
        else:
            parts.append(f"[{kind or 'content'}]")
    if not parts and structured is not None:
        parts.append(json.dumps(structured, default=str))
    text = "\n".join(parts)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[cut: {len(text)} characters in all]"
    return text


async def call_tool(
    endpoint: Endpoint, tool: str, arguments: dict[str, Any], call_key: str = ""
) -> ToolCallResult:
    """Call ``tool``; ``call_key`` travels in the request's ``_meta`` as
    CALL_KEY_META: the same on every attempt of one call, so a server can
    tell a retried call (its first attempt's answer was lost) from a new one."""
    meta = cast(RequestParamsMeta, {CALL_KEY_META: call_key}) if call_key else None
    try:
        async with _http(endpoint) as http, _client(endpoint.server, http) as client:
            result = await client.call_tool(tool, arguments, meta=meta)
    except MCPError as exc:
        # The server answered, and refused: the model may correct itself.
        return ToolCallResult(content=f"error: {exc}"[:MAX_RESULT_CHARS], is_error=True)
    except Exception as exc:
        raise _unreachable(endpoint, next(iter(_errors(exc)))) from None
    return ToolCallResult(
        content=build_result_text(result.content, result.structured_content),
        is_error=bool(result.is_error),
    )
