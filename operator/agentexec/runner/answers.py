"""A provider's answer, read off the wire into a ``Completion``.

A Chat Completions answer comes whole (one JSON body) or streamed as
server-sent events (``stream: true``): content in ``delta`` pieces, tool
calls in pieces by index (``delta.tool_calls``: the id and name once, the
arguments as text in parts), the usage in a last chunk without choices,
then ``[DONE]``. Both become the same ``Completion``: the text, the tool
calls in OpenAI's shape, why it ended and the provider's token counts. What
is not an answer (a non-2xx, a body that is no chat completion, an error
mid-stream, a content filter's stop) is raised as the ProviderFailure it is
(runner/provider_errors.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentexec.runner.provider_errors import (
    ProviderFailure,
    check_finish,
    classify_status,
    provider_words,
)
from agentexec.runner.providers import Provider
from agentexec.temporal.types import (
    PROVIDER_INVALID_RESPONSE,
    PROVIDER_UNAVAILABLE,
    AgentResult,
    Usage,
)


@dataclass(frozen=True)
class Completion:
    """One answer: its text, the tool calls it asks for (OpenAI's shape: id,
    type, and the function's name and arguments as JSON text), why it ended,
    and what it used."""

    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None


def build_completion(
    provider: Provider, status: int, raw: bytes, retry_after: str | None = None
) -> Completion:
    """The answer of a whole (not streamed) response, or the ProviderFailure it is."""
    if not 200 <= status < 300:
        raise classify_status(provider, status, raw, retry_after)
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise TypeError("content is not a string")
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise TypeError("tool_calls is not a list")
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        sent = raw.decode("utf-8", errors="replace")[:200]
        raise ProviderFailure(
            PROVIDER_INVALID_RESPONSE,
            f"provider {provider.name!r} answered HTTP {status} but not with a chat "
            f"completion ({exc}): {sent}",
        ) from None
    finish = choice.get("finish_reason")
    check_finish(provider, finish)
    return Completion(
        content=content,
        tool_calls=build_tool_calls(calls),
        finish_reason=finish if isinstance(finish, str) else None,
        usage=usage_of(data.get("usage")),
    )


def build_result(
    provider: Provider, status: int, raw: bytes, retry_after: str | None = None
) -> AgentResult:
    """The chat agent's result from a whole (not streamed) answer, or the
    ProviderFailure it is."""
    answer = build_completion(provider, status, raw, retry_after)
    return AgentResult(output=answer.content, usage=answer.usage)


def build_tool_calls(calls: Iterable[Any]) -> tuple[dict[str, Any], ...]:
    """Tool calls as the conversation carries them back: each with an id, a
    function name and its arguments as JSON text (some servers send an object)."""
    out = []
    for i, call in enumerate(calls):
        if not isinstance(call, Mapping):
            continue
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        arguments = function.get("arguments")
        out.append(
            {
                "id": str(call.get("id") or f"call-{i}"),
                "type": "function",
                "function": {
                    "name": str(function.get("name") or ""),
                    "arguments": arguments
                    if isinstance(arguments, str)
                    else json.dumps(arguments if arguments is not None else {}),
                },
            }
        )
    return tuple(out)


def usage_of(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None

    def count(key: str) -> int:
        n = value.get(key)
        return n if isinstance(n, int) and not isinstance(n, bool) else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    return Usage(prompt, completion, count("total_tokens") or prompt + completion)


class SseParser:
    """Server-sent events, fed as bytes arrive; yields each event's data.

    aiohttp reads the stream but does not parse SSE, and the format is
    small: lines, ``data:`` fields joined by newlines, a blank line ending an
    event, comments (``:``) as keep-alives.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        events: list[str] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return events
            line = self._buffer[:end].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buffer = self._buffer[end + 1 :]
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)

    def close(self) -> list[str]:
        """What a stream that ended without a last blank line left."""
        events = self.feed(b"\n\n") if self._buffer else []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events


@dataclass
class Streamed:
    """One streamed answer as it arrives."""

    provider: Provider
    parts: list[str] = field(default_factory=list)
    chars: int = 0
    deltas: int = 0  # content and tool-call chunks: about a token each
    usage: Usage | None = None
    done: bool = False
    finish_reason: str | None = None  # the last one sent ("length": max_tokens ended it)
    # Tool calls by their index, as their pieces arrive: id, name, arguments' parts.
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def completion(self) -> Completion:
        return Completion(
            content=self.content,
            tool_calls=build_tool_calls(
                {
                    "id": call["id"],
                    "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
                }
                for _, call in sorted(self.calls.items())
            ),
            finish_reason=self.finish_reason,
            usage=self.usage,
        )

    def _tool_call_delta(self, position: int, piece: Mapping[str, Any]) -> None:
        index = piece.get("index")
        index = index if isinstance(index, int) and not isinstance(index, bool) else position
        call = self.calls.setdefault(index, {"id": "", "name": "", "arguments": []})
        if isinstance(piece.get("id"), str) and piece["id"]:
            call["id"] = piece["id"]
        function = piece.get("function")
        if not isinstance(function, Mapping):
            return
        name = function.get("name")
        # The name comes whole in the first piece; a server that repeats it
        # in later pieces must not double it.
        if isinstance(name, str) and name and name != call["name"]:
            call["name"] += name
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call["arguments"].append(arguments)
            self.deltas += 1

    def event(self, data: str) -> None:
        if data.strip() == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ProviderFailure(
                PROVIDER_INVALID_RESPONSE,
                f"provider {self.provider.name!r} streamed something that is not JSON: "
                f"{data[:200]}",
            ) from None
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            # An error mid-stream (OpenAI and vLLM send one event and end).
            raise ProviderFailure(
                PROVIDER_UNAVAILABLE,
                f"provider {self.provider.name!r} failed mid-answer: "
                f"{provider_words(json.dumps(chunk).encode())}",
                resend=True,
            )
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return  # the usage chunk has no choices
        delta = choices[0].get("delta")
        delta = delta if isinstance(delta, dict) else {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.parts.append(content)
            self.chars += len(content)
            self.deltas += 1
        calls = delta.get("tool_calls")
        for position, piece in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(piece, Mapping):
                self._tool_call_delta(position, piece)
        finish = choices[0].get("finish_reason")
        if isinstance(finish, str):
            self.finish_reason = finish
        check_finish(self.provider, finish)
