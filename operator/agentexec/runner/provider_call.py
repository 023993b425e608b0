"""One model call to a provider: the request sent, re-sent while that may help, billed.

``POST {baseURL}/chat/completions``, streamed (``stream: true``, with
``stream_options.include_usage``) unless the provider says ``stream:
false``. A request is re-sent only when no answer can come on it any more:
it stalled (no byte for the provider's ``stallTimeoutSeconds``; the
connection is closed first) or it was answered with a retryable status (429
after its ``Retry-After``, 408, 5xx), or the connection failed. Re-sends
happen inside the attempt, with the project's backoff, until the attempt's
deadline; then the execution fails with the reason. Every request is billed
in ``status.usage`` (a cut one by the tokens it had streamed), with the
count of re-sent ones, and the answer may use no more tokens than the
attempt's budget has left (``spec.limits.maxTokens``).

The chat agent (runner/chat.py) and the agent loop's model calls
(runner/steps.py, through ``ChatAgent.send``) both call through here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import re
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from temporalio.exceptions import ApplicationError

from agentexec import backoff
from agentexec.runner.answers import Completion, SseParser, Streamed, build_completion
from agentexec.runner.api import AgentContext
from agentexec.runner.provider_errors import ProviderFailure, provider_error, scrub
from agentexec.runner.providers import Provider, create_session
from agentexec.temporal.types import PROVIDER_UNAVAILABLE, Usage, add_usage

# The chat agent's calls, whichever agent makes them: its logger.
log = logging.getLogger("agentexec.runner.chat")

# Of a streamed answer, the partial output kept in the attempt's checkpoint.
MAX_PARTIAL = 64 * 1024
# Header names whose configured values are secrets, like the key.
SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie", re.IGNORECASE)


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
