"""Tools from MCP servers, as the agent loop's activities call them.

The ``mcp`` SDK's client over Streamable HTTP: one connection per call (an
activity may run on any runner, and a connection kept between steps would not
survive a runner's restart anyway). A server that cannot be reached, times
out or breaks the protocol raises a retryable ``ToolServerError``; a tool
that ran and failed (``isError``), or that the server refused (unknown tool,
bad arguments), is a result the model is told about.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, cast

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types import RequestParamsMeta
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.temporal.steps import TOOL_SERVER_ERROR, Tool, ToolCallResult, ToolServer

# The request _meta key naming one tool call of one execution (see call_tool).
CALL_KEY_META = "agentexec.io/call"
# What one tool result may add to the conversation (and to the history).
MAX_RESULT_CHARS = 16 * 1024


def _client(server: ToolServer, http: httpx2.AsyncClient) -> Client:
    return Client(
        streamable_http_client(server.url, http_client=http),
        read_timeout_seconds=float(server.timeout_seconds),
        cache=None,  # every listing from the server as it is now
    )


def _unreachable(server: ToolServer, exc: BaseException) -> ApplicationError:
    return ApplicationError(
        f"MCP server {server.name!r} at {server.url}: {type(exc).__name__}: {exc}"[:1000],
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


async def list_tools(server: ToolServer) -> list[Tool]:
    tools: list[Any] = []
    try:
        async with (
            httpx2.AsyncClient(timeout=server.timeout_seconds) as http,
            _client(server, http) as client,
        ):
            cursor: str | None = None
            for _ in range(100):  # a server that pages forever cannot hang the step
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
    except MCPError as exc:
        raise _unreachable(server, exc) from None
    except Exception as exc:
        raise _unreachable(server, next(iter(_errors(exc)))) from None
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
    server: ToolServer, tool: str, arguments: dict[str, Any], call_key: str = ""
) -> ToolCallResult:
    """Call ``tool``; ``call_key`` travels in the request's ``_meta`` as
    CALL_KEY_META: the same on every attempt of one call, so a server can
    tell a retried call (its first attempt's answer was lost) from a new one."""
    meta = cast(RequestParamsMeta, {CALL_KEY_META: call_key}) if call_key else None
    try:
        async with (
            httpx2.AsyncClient(timeout=server.timeout_seconds) as http,
            _client(server, http) as client,
        ):
            result = await client.call_tool(tool, arguments, meta=meta)
    except MCPError as exc:
        # The server answered, and refused: the model may correct itself.
        return ToolCallResult(content=f"error: {exc}"[:MAX_RESULT_CHARS], is_error=True)
    except Exception as exc:
        raise _unreachable(server, next(iter(_errors(exc)))) from None
    return ToolCallResult(
        content=build_result_text(result.content, result.structured_content),
        is_error=bool(result.is_error),
    )
