"""The chat agent: one answer from an OpenAI-compatible Chat Completions API.

``POST {baseURL}/chat/completions`` with the system prompt and the message,
as OpenAI, vLLM, Ollama, llama.cpp's server and LiteLLM serve it. The answer
is the first choice's content; the provider's token counts go into the result
(``status.usage``).

What it calls comes from the Agent snapshot (``request.agent_spec``: model,
systemPrompt, provider) or, for a plain AgentExecution, from
``spec.parameters`` (``model``, ``systemPrompt``, ``provider``); both may set
``temperature``, ``maxTokens``, ``topP``, ``seed`` and ``stop``. Providers and
their keys are configured on the runner (see providers.py).

The answer is streamed (``stream: true``, with ``stream_options.include_usage``)
unless the provider says ``stream: false``. A request is re-sent only when no
answer can come on it any more: it stalled (no byte for the provider's
``stallTimeoutSeconds``; the connection is closed first) or it was answered
with a retryable status (429 after its ``Retry-After``, 408, 5xx), or the
connection failed. Re-sends happen inside the attempt, with the project's
backoff, until the attempt's deadline; then the execution fails with the
reason. Every request is billed in ``status.usage`` (a cut one by the tokens
it had streamed), with the count of re-sent ones.

The agent loop (Agents of type assistant, runner/steps.py) sends its model
calls through the same code, with tools: a streamed answer's tool calls
arrive in pieces (``delta.tool_calls``, by index: the id and name once, the
arguments as text in parts) and are put together here.

Failures say which side is at fault (docs/agents.md, "Failures and retries"):
``RateLimited`` and ``ProviderUnavailable`` once re-sending cannot go on;
``ProviderRejected`` (another 4xx), ``ContextTooLong`` and ``ContentFiltered``
(where the provider says so) and ``ProviderInvalidResponse`` (a 2xx that is
no chat completion) at once. Messages carry the provider's words, never a key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec import backoff
from agentexec.runner import AgentFailed
from agentexec.runner.api import AgentContext, current_context
from agentexec.runner.providers import (
    PROVIDERS_FILE_ENV,
    Provider,
    ProviderConfigError,
    create_session,
    load_providers,
)
from agentexec.settings import ProxySettings
from agentexec.temporal.types import (
    CONTENT_FILTERED,
    CONTEXT_TOO_LONG,
    PROVIDER_INVALID_RESPONSE,
    PROVIDER_REJECTED,
    PROVIDER_UNAVAILABLE,
    RATE_LIMITED,
    AgentRequest,
    AgentResult,
    Usage,
    add_usage,
)

if TYPE_CHECKING:
    from agentexec.settings import Settings

log = logging.getLogger("agentexec.runner.chat")

# A provider's apiKeyFile could not be read at call time: retryable (its
# Secret may be mounted late, or be mid-rotation), a few seconds apart; when
# the attempts run out the execution says RunnerFailed with this message.
PROVIDER_KEY_UNREADABLE = "ProviderKeyUnreadable"
KEY_RETRY_DELAY = timedelta(seconds=5)
_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")
# What providers say when the prompt does not fit the model (OpenAI's code
# context_length_exceeded, vLLM, llama.cpp's server, Anthropic's proxies).
_CONTEXT_TOO_LONG = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|too many tokens|prompt is too long"
    r"|exceeds? (the )?(available )?context",
    re.IGNORECASE,
)
_CONTENT_FILTERED = {"content_filter", "content_policy_violation", "content_filtered"}
# Of a streamed answer, the partial output kept in the attempt's checkpoint.
MAX_PARTIAL = 64 * 1024

MAX_MESSAGE = 1000  # of the provider's words in a failure message
REDACTED = "[REDACTED]"
# spec.parameters (camelCase, as in a resource) -> the API's request fields.
OPTIONS = {
    "temperature": "temperature",
    "maxTokens": "max_tokens",
    "topP": "top_p",
    "seed": "seed",
    "stop": "stop",
}
# Header names whose configured values are secrets, like the key.
SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie", re.IGNORECASE)
# What a provider may echo of a credential: "Bearer xyz", "API key provided: sk-...";
# and a URL's login (aiohttp names the proxy URL, login included, in its errors).
_ECHOED = (
    re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+"),
    re.compile(r"(://[^/\s:@]+:)[^@\s/]+(?=@)"),
    re.compile(r"(?i)\b((?:api[ _-]?key|token|authorization)\b[^:=\n]{0,24}[:=]\s*\"?)[^\s\"',]+"),
)


@dataclass(frozen=True)
class ChatCall:
    """What one chat run asks of which provider (built from the request alone)."""

    provider: str | None
    body: dict[str, Any]


@dataclass(frozen=True)
class Completion:
    """One answer: its text, the tool calls it asks for (OpenAI's shape: id,
    type, and the function's name and arguments as JSON text), why it ended,
    and what it used."""

    content: str
    tool_calls: tuple[dict[str, Any], ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None


def build_chat_call(
    request: AgentRequest, conversation: Iterable[Mapping[str, Any]] | None = None
) -> ChatCall:
    """The provider name and the request body; AgentFailed when the model is unnamed.

    ``conversation`` (the agent loop's messages so far) replaces the request's
    message after the system prompt."""
    spec = request.agent_spec
    params = request.parameters or {}

    def pick(spec_value: str | None, key: str) -> str | None:
        if spec_value:
            return spec_value
        value = params.get(key)
        return value if isinstance(value, str) and value else None

    model = pick(spec.model if spec else None, "model")
    if model is None:
        raise AgentFailed("the chat agent needs a model: set the Agent's model or parameters.model")
    system_prompt = pick(spec.system_prompt if spec else None, "systemPrompt")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if conversation is None:
        messages.append({"role": "user", "content": request.message})
    else:
        messages.extend(dict(m) for m in conversation)
    body: dict[str, Any] = {"model": model, "messages": messages}
    for key, field_name in OPTIONS.items():
        if params.get(key) is not None:
            body[field_name] = params[key]
    return ChatCall(provider=pick(spec.provider if spec else None, "provider"), body=body)


def choose_provider(providers: Mapping[str, Provider], name: str | None) -> Provider:
    if name is not None and name in providers:
        return providers[name]
    if name is None and len(providers) == 1:
        return next(iter(providers.values()))
    known = ", ".join(sorted(providers)) or "none"
    if name is None:
        raise AgentFailed(
            f"the chat agent needs a provider: set the Agent's provider or parameters.provider "
            f"(configured: {known})"
        )
    # The Agent names a provider this runner does not have: the same request
    # fails the same way on every attempt (runners of a queue share their
    # providers file), so not retried. RunnerFailed, not ProviderRejected:
    # no provider was called, and the fix is the Agent or the runner's file.
    raise AgentFailed(
        f"no provider named {name!r} on this runner (configured: {known}): set the Agent's "
        "provider to one of these, or add it to the runner's providers file"
    )


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` without the credentials, nor what looks like one echoed back."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    for pattern in _ECHOED:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def provider_words(raw: bytes) -> str:
    """The provider's error message, however it shapes its error body."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:MAX_MESSAGE]
    found: Any = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            found = error.get("message")
        found = found or error or data.get("detail") or data.get("message")
    words = found if isinstance(found, str) else json.dumps(found or data)
    return words[:MAX_MESSAGE]


class ProviderFailure(Exception):
    """One request's failure, classified: ``resend`` when sending it again may
    help (the request is over: nothing more can come on it)."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        resend: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.resend = resend
        self.retry_after = retry_after


def provider_error(kind: str, message: str, retryable: bool = False) -> ApplicationError:
    """What the activity raises: non-retryable unless re-sending was left to
    the caller (an agent run outside an attempt, whose deadline is unknown)."""
    return ApplicationError(
        message,
        type=kind,
        non_retryable=not retryable,
        # An expected outcome, said on the resource: no traceback in the log.
        category=ApplicationErrorCategory.BENIGN,
    )


def retry_after_seconds(header: str | None) -> float | None:
    """The delay a ``Retry-After`` header asks for, in its delay-seconds form
    (the HTTP-date form, rare from APIs and needing a clock in agreement with
    the provider's, is not read: the backoff applies)."""
    if header is None or not _DELAY_SECONDS.fullmatch(header.strip()):
        return None
    return float(header.strip())


def classify_status(
    provider: Provider, status: int, raw: bytes, retry_after: str | None = None
) -> ProviderFailure:
    """A non-2xx answer, classified."""
    words = provider_words(raw)
    message = f"provider {provider.name!r} answered HTTP {status}: {words}"
    if status == 429:
        return ProviderFailure(
            RATE_LIMITED, message, resend=True, retry_after=retry_after_seconds(retry_after)
        )
    if status == 408 or status >= 500:
        return ProviderFailure(
            PROVIDER_UNAVAILABLE, message, resend=True, retry_after=retry_after_seconds(retry_after)
        )
    code = _error_code(raw)
    if code in _CONTENT_FILTERED:
        return ProviderFailure(CONTENT_FILTERED, message)
    if code == "context_length_exceeded" or (
        status in (400, 413, 422) and _CONTEXT_TOO_LONG.search(words)
    ):
        return ProviderFailure(CONTEXT_TOO_LONG, message)
    return ProviderFailure(PROVIDER_REJECTED, message)


def _error_code(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


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
    _check_finish(provider, finish)
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


def _check_finish(provider: Provider, finish_reason: object) -> None:
    if finish_reason in _CONTENT_FILTERED:
        raise ProviderFailure(
            CONTENT_FILTERED,
            f"provider {provider.name!r} stopped the answer: finish_reason {finish_reason}",
        )


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
        _check_finish(self.provider, finish)


@dataclass
class Bill:
    """What one attempt's requests used, told to its context as it grows (the
    heartbeats carry it): a request cut off is billed by the tokens it had
    streamed, and its prompt once a later answer of the same request says
    how many tokens that prompt is."""

    ctx: AgentContext | None
    total: Usage | None = None
    unpriced_prompts: int = 0  # cut requests whose prompt tokens are not known yet

    def add(self, usage: Usage) -> None:
        self.total = add_usage(self.total, usage)
        if self.ctx is not None:
            self.ctx.add_usage(usage)

    def sent(self, resent: bool) -> None:
        self.add(Usage(requests=1, resent_requests=1 if resent else 0))

    def cut(self, streamed: Streamed | None) -> None:
        tokens = streamed.deltas if streamed is not None else 0
        self.unpriced_prompts += 1
        if tokens:
            self.add(Usage(completion_tokens=tokens, total_tokens=tokens))

    def answered(self, usage: Usage | None, streamed: Streamed | None) -> None:
        if usage is None and streamed is not None and streamed.deltas:
            usage = Usage(completion_tokens=streamed.deltas, total_tokens=streamed.deltas)
        if usage is None:
            return
        earlier = usage.prompt_tokens * self.unpriced_prompts
        self.unpriced_prompts = 0
        self.add(
            Usage(
                usage.prompt_tokens + earlier,
                usage.completion_tokens,
                usage.total_tokens + earlier,
            )
        )


def _shown(url: str) -> str:
    # The base URL without userinfo or query, either of which may hold a secret.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True)
class ProviderCall:
    """One provider, its key, and the request to send."""

    provider: Provider
    api_key: str | None
    body: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        # The key's header is the session's (providers.create_session).
        return {"Content-Type": "application/json", **self.provider.headers}

    @property
    def secrets(self) -> list[str | None]:
        values = (v for k, v in self.provider.headers.items() if SECRET_HEADER.search(k))
        # aiohttp names the URL in its errors, and its query may hold a key too.
        return [self.api_key, *values, urlsplit(self.provider.base_url).query]


async def send_once(
    call: ProviderCall, progress: Streamed | None, on_chunk: Any = None
) -> tuple[Completion, Streamed | None]:
    """One request. Streamed: bounded by the stall timeout between bytes, never
    by a total; otherwise by the provider's timeoutSeconds. Raises ProviderFailure."""
    provider = call.provider
    where = f"provider {provider.name!r} at {_shown(provider.base_url)}"
    if provider.stream:
        stall = provider.stall_timeout_seconds
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=stall, sock_read=stall)
        body = {**call.body, "stream": True, "stream_options": {"include_usage": True}}
    else:
        timeout = aiohttp.ClientTimeout(total=provider.timeout_seconds)
        body = call.body
    url = f"{provider.base_url}/chat/completions"
    try:
        async with (
            create_session(provider, call.api_key, timeout) as session,
            session.post(url, json=body, headers=call.headers, allow_redirects=False) as response,
        ):
            retry_after = response.headers.get("Retry-After")
            kind = response.headers.get("Content-Type", "")
            if not (200 <= response.status < 300 and kind.startswith("text/event-stream")):
                raw = await response.read()
                return build_completion(provider, response.status, raw, retry_after), None
            progress = progress if progress is not None else Streamed(provider)
            parser = SseParser()
            async for chunk in response.content.iter_any():
                for data in parser.feed(chunk):
                    progress.event(data)
                    if on_chunk is not None:
                        on_chunk(progress)
                if progress.done:
                    break
            for data in parser.close():
                progress.event(data)
    except TimeoutError:
        if provider.stream:
            message = (
                f"{where} sent nothing for {provider.stall_timeout_seconds:g}s "
                "(stallTimeoutSeconds); the request was closed"
            )
        else:
            message = f"{where} did not answer within timeoutSeconds={provider.timeout_seconds:g}"
        raise ProviderFailure(PROVIDER_UNAVAILABLE, message, resend=True) from None
    except aiohttp.ClientError as exc:
        raise ProviderFailure(
            PROVIDER_UNAVAILABLE,
            f"could not reach {where}: {type(exc).__name__}: {exc}",
            resend=True,
        ) from None
    if not progress.done and not progress.parts and not progress.calls:
        raise ProviderFailure(
            PROVIDER_UNAVAILABLE, f"{where} ended its stream without an answer", resend=True
        )
    return progress.completion(), progress


async def complete(call: ProviderCall, ctx: AgentContext | None) -> Completion:
    """The answer, re-sending the request while that may help and the attempt's
    deadline allows. Outside an attempt (no deadline known) nothing is re-sent:
    a retryable failure is raised retryable."""
    bill = Bill(ctx)
    resumed = ctx is not None and _requests_before(ctx.resume_from) > 0
    deadline = None
    left = ctx.time_left() if ctx is not None else None
    if left is not None:
        deadline = time.monotonic() + left
    sent = 0
    last_checkpoint = 0.0

    def on_chunk(progress: Streamed) -> None:
        nonlocal last_checkpoint
        if ctx is None:
            return
        ctx.output_progress(progress.chars)
        now = time.monotonic()
        if now - last_checkpoint >= ctx.heartbeat_every:
            last_checkpoint = now
            # The answer so far (bounded): a disrupted attempt says how far
            # it got, and the next one knows a request was already billed.
            requests = _requests_before(ctx.resume_from) + sent
            ctx.checkpoint({"requests": requests, "partial": progress.content[-MAX_PARTIAL:]})

    requested = call.body.get("max_tokens")
    limit: int | None = None
    while True:
        if ctx is not None:
            # spec.limits.maxTokens: the answer may use no more than is left
            # (BudgetExceeded when nothing is); a call past it stops the agent
            # when it is billed (AgentContext.add_usage).
            limit = ctx.budget.cap(requested)
            if limit is not None:
                call = dataclasses.replace(call, body={**call.body, "max_tokens": limit})
        bill.sent(resent=sent > 0 or resumed)
        sent += 1
        streamed = Streamed(call.provider) if call.provider.stream else None
        try:
            result, streamed = await send_once(call, streamed, on_chunk)
        except ProviderFailure as failure:
            message = scrub(failure.message, call.secrets)
            if failure.resend:
                bill.cut(streamed)
            else:
                bill.answered(None, streamed)
            if not failure.resend:
                raise _failed(call, failure.kind, message) from None
            delay = failure.retry_after
            if delay is None:
                delay = backoff.PROVIDER_RESEND.delay(sent, random.random())
            if deadline is None:
                raise _failed(call, failure.kind, message, retryable=True) from None
            left = deadline - time.monotonic()
            if delay >= left - 1.0:
                asked = " it asked for" if failure.retry_after is not None else ""
                raise _failed(
                    call,
                    failure.kind,
                    f"{message} (request {sent}; not re-sent: the{asked} {delay:.0f}s wait "
                    f"would pass the attempt's deadline, {max(left, 0):.0f}s away)",
                ) from None
            log.warning(
                "chat provider request failed; re-sending",
                extra={
                    "provider": call.provider.name,
                    "reason": failure.kind,
                    "error": message[:300],
                    "request": sent,
                    "resend_in_seconds": round(delay, 1),
                },
            )
            await asyncio.sleep(delay)
            continue
        bill.answered(result.usage, streamed)
        if ctx is not None and limit is not None and (requested is None or limit < requested):
            # The budget, not the model, ended this answer (it used all it was
            # allowed): the agent is stopped, not given a truncated answer.
            used = result.usage.completion_tokens if result.usage is not None else 0
            cut = streamed is not None and streamed.finish_reason == "length"
            if cut or max(used, streamed.deltas if streamed is not None else 0) >= limit:
                raise ctx.budget.exceeded("by its last model call, cut at what was left")
        return replace(result, usage=bill.total)


def _requests_before(checkpoint: Any) -> int:
    """Requests an earlier attempt of this chat had sent (from its checkpoint)."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("requests"), int):
        return int(checkpoint["requests"])
    return 0


def _failed(
    call: ProviderCall, kind: str, message: str, retryable: bool = False
) -> ApplicationError:
    log.warning(
        "chat provider call failed: %s",
        message,
        extra={"provider": call.provider.name, "reason": kind},
    )
    # A new error, raised outside the except blocks by the caller: no
    # exception chain (which could hold request details) travels into the
    # activity failure.
    return provider_error(kind, message, retryable)


class ChatAgent:
    name = "chat"

    def __init__(self, providers_file: Path | None = None) -> None:
        # The runner gives the settings' providers file through configure();
        # the file is read again at each call (a ConfigMap update applies
        # without a restart).
        self.providers_file = providers_file
        self.proxies: ProxySettings | None = None

    def configure(self, settings: Settings) -> None:
        """Check the providers file once, when the runner starts.

        A file that cannot be read or parsed is fatal (ProviderConfigError,
        naming the file, never a key): a runner that starts with it would look
        healthy and fail every chat execution. A key file not there yet is a
        warning only: Secrets may be mounted after the container starts, and
        keys are read at each call.
        """
        self.providers_file = settings.providers_file
        self.proxies = settings.proxy
        if self.providers_file is None:
            log.warning(
                "the chat agent has no providers: chat executions on this runner fail "
                f"until {PROVIDERS_FILE_ENV} names a providers file"
            )
            return
        providers = load_providers(self.providers_file, self.proxies)
        for provider in providers.values():
            for problem in provider.credential_problems():
                log.warning("%s (its calls fail until it is there)", problem)
        log.info(
            "chat providers",
            extra={
                "providers_file": str(self.providers_file),
                "providers": sorted(providers),
                # Which go through a proxy (its address only: no credentials).
                "proxied": sorted(p.name for p in providers.values() if p.proxy),
            },
        )

    def check(self, settings: Settings) -> list[str]:
        """For --check-config: each provider's missing or empty key and CA files
        (a runner only warns about them at start)."""
        if settings.providers_file is None:
            return []
        providers = load_providers(settings.providers_file, settings.proxy)
        return [p for provider in providers.values() for p in provider.credential_problems()]

    async def run(self, request: AgentRequest) -> AgentResult:
        call = build_chat_call(request)
        answer = await self.send(call.provider, call.body)
        return AgentResult(output=answer.content, usage=answer.usage)

    async def send(self, provider_name: str | None, body: dict[str, Any]) -> Completion:
        """``body`` to the provider ``provider_name`` picks on this runner,
        re-sent while that may help (see complete); in the running attempt's
        context, which is billed."""
        provider, api_key = self.provider_for(provider_name)
        try:
            return await complete(ProviderCall(provider, api_key, body), current_context())
        except ProviderConfigError as exc:  # its caFile cannot be used
            raise AgentFailed(str(exc)) from None

    def provider_for(self, name: str | None) -> tuple[Provider, str | None]:
        """The provider ``name`` picks on this runner, and its key as mounted now.

        AgentFailed when none can be chosen (retrying cannot help); a key that
        cannot be read is retryable (PROVIDER_KEY_UNREADABLE)."""
        if self.providers_file is None:
            raise AgentFailed(
                f"the chat agent has no providers on this runner: set {PROVIDERS_FILE_ENV}"
            )
        try:
            # Was valid at startup: broken since (a bad ConfigMap update) is
            # for the platform team to fix, and retrying cannot.
            providers = load_providers(self.providers_file, self.proxies)
        except ProviderConfigError as exc:
            raise AgentFailed(str(exc)) from None
        provider = choose_provider(providers, name)
        try:
            return provider, provider.read_api_key()
        except ProviderConfigError as exc:
            error = ApplicationError(
                str(exc),
                type=PROVIDER_KEY_UNREADABLE,
                next_retry_delay=KEY_RETRY_DELAY,
                category=ApplicationErrorCategory.BENIGN,
            )
        log.warning("chat provider key unreadable: %s", error.message)
        raise error
