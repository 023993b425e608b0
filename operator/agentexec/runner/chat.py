"""The chat agent: one call to an OpenAI-compatible Chat Completions API.

``POST {baseURL}/chat/completions`` with the system prompt and the message,
as OpenAI, vLLM, Ollama, llama.cpp's server and LiteLLM serve it. The answer
is the first choice's content; the provider's token counts go into the result
(``status.usage``).

What it calls comes from the Agent snapshot (``request.agent_spec``: model,
systemPrompt, provider) or, for a plain AgentExecution, from
``spec.parameters`` (``model``, ``systemPrompt``, ``provider``); both may set
``temperature``, ``maxTokens``, ``topP``, ``seed`` and ``stop``. Providers and
their keys are configured on the runner (see providers.py).

Failures say which side is at fault and whether retrying can help:
``ProviderUnavailable`` (refused, timed out, 408, 429, 5xx) is retried by
the activity's retry policy, after the provider's ``Retry-After`` if it sent
one; ``ProviderRejected`` (any other 4xx) and
``ProviderInvalidResponse`` (a 2xx that is no chat completion) are not.
Messages carry the provider's own words, never the key.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.runner import AgentFailed, current_budget
from agentexec.runner.providers import (
    PROVIDERS_FILE_ENV,
    Provider,
    ProviderConfigError,
    load_providers,
)
from agentexec.temporal.types import (
    PROVIDER_INVALID_RESPONSE,
    PROVIDER_REJECTED,
    PROVIDER_UNAVAILABLE,
    AgentRequest,
    AgentResult,
    Usage,
)

if TYPE_CHECKING:
    from agentexec.settings import Settings

log = logging.getLogger("agentexec.runner.chat")

# A provider's apiKeyFile could not be read at call time: retryable (its
# Secret may be mounted late, or be mid-rotation), a few seconds apart; when
# the attempts run out the execution says RunnerFailed with this message.
PROVIDER_KEY_UNREADABLE = "ProviderKeyUnreadable"
KEY_RETRY_DELAY = timedelta(seconds=5)
# The most a provider's Retry-After may delay the next attempt: the retry
# policy's own delays are 1 s and 2 s, and a provider asking for minutes is
# better answered by failing than by holding the execution that long.
MAX_RETRY_AFTER = 60.0
_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")

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
# What a provider may echo of a credential: "Bearer xyz", "API key provided: sk-...".
_ECHOED = (
    re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+"),
    re.compile(r"(?i)\b((?:api[ _-]?key|token|authorization)\b[^:=\n]{0,24}[:=]\s*\"?)[^\s\"',]+"),
)


@dataclass(frozen=True)
class ChatCall:
    """What one chat run asks of which provider (built from the request alone)."""

    provider: str | None
    body: dict[str, Any]


def build_chat_call(request: AgentRequest) -> ChatCall:
    """The provider name and the request body; AgentFailed when the model is unnamed."""
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
    messages.append({"role": "user", "content": request.message})
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


def provider_error(
    kind: str, message: str, next_retry_delay: timedelta | None = None
) -> ApplicationError:
    return ApplicationError(
        message,
        type=kind,
        non_retryable=kind != PROVIDER_UNAVAILABLE,
        next_retry_delay=next_retry_delay,
        # An expected outcome, said on the resource: no traceback in the log.
        category=ApplicationErrorCategory.BENIGN,
    )


def retry_delay(retry_after: str | None, time_left: float | None = None) -> timedelta | None:
    """The next attempt's delay a ``Retry-After`` header asks for, capped at
    MAX_RETRY_AFTER and at the time the execution has left; None (the retry
    policy's delay) without one. Only the delay-seconds form is read: the
    HTTP-date form (rare from APIs, and needing a clock in agreement with the
    provider's) is ignored."""
    if retry_after is None or not _DELAY_SECONDS.fullmatch(retry_after.strip()):
        return None
    seconds = min(float(retry_after.strip()), MAX_RETRY_AFTER)
    if time_left is not None:
        seconds = min(seconds, max(time_left, 0.0))
    return timedelta(seconds=seconds)


def build_result(
    provider: Provider,
    status: int,
    raw: bytes,
    retry_after: str | None = None,
    time_left: float | None = None,
) -> AgentResult:
    """The agent's result from the provider's answer, or the ApplicationError to raise.

    A retryable answer (429, 503, ...) with ``Retry-After`` waits as long
    before the next attempt (see retry_delay)."""
    where = f"provider {provider.name!r}"
    if not 200 <= status < 300:
        if status in (408, 429) or status >= 500:
            raise provider_error(
                PROVIDER_UNAVAILABLE,
                f"{where} answered HTTP {status}: {provider_words(raw)}",
                retry_delay(retry_after, time_left),
            )
        raise provider_error(
            PROVIDER_REJECTED, f"{where} answered HTTP {status}: {provider_words(raw)}"
        )
    try:
        data = json.loads(raw)
        message = data["choices"][0]["message"]
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise TypeError("content is not a string")
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        sent = raw.decode("utf-8", errors="replace")[:200]
        raise provider_error(
            PROVIDER_INVALID_RESPONSE,
            f"{where} answered HTTP {status} but not with a chat completion ({exc}): {sent}",
        ) from None
    return AgentResult(output=content, usage=usage_of(data.get("usage")))


def usage_of(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None

    def count(key: str) -> int:
        n = value.get(key)
        return n if isinstance(n, int) and not isinstance(n, bool) else 0

    prompt, completion = count("prompt_tokens"), count("completion_tokens")
    return Usage(prompt, completion, count("total_tokens") or prompt + completion)


def _shown(url: str) -> str:
    # The base URL without userinfo or query, either of which may hold a secret.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def time_left() -> float | None:
    """Seconds until this activity's schedule-to-close deadline (the
    execution's timeoutSeconds, all attempts together); None outside one."""
    if not activity.in_activity():
        return None
    info = activity.info()
    if not info.schedule_to_close_timeout:
        return None
    deadline = info.scheduled_time + info.schedule_to_close_timeout
    return (deadline - datetime.now(UTC)).total_seconds()


async def call_provider(
    provider: Provider, api_key: str | None, body: dict[str, Any]
) -> AgentResult:
    """One Chat Completions request, bounded by the provider's timeoutSeconds."""
    headers = {"Content-Type": "application/json", **provider.headers}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    secrets = [api_key, *(v for k, v in headers.items() if SECRET_HEADER.search(k))]
    url = f"{provider.base_url}/chat/completions"
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=provider.timeout_seconds)
            ) as session,
            session.post(url, json=body, headers=headers, allow_redirects=False) as response,
        ):
            status, raw = response.status, await response.read()
            retry_after = response.headers.get("Retry-After")
    except TimeoutError:
        error = provider_error(
            PROVIDER_UNAVAILABLE,
            f"provider {provider.name!r} at {_shown(provider.base_url)} did not answer within "
            f"timeoutSeconds={provider.timeout_seconds:g}",
        )
    except aiohttp.ClientError as exc:
        error = provider_error(
            PROVIDER_UNAVAILABLE,
            scrub(
                f"could not reach provider {provider.name!r} at {_shown(provider.base_url)}: "
                f"{type(exc).__name__}: {exc}",
                # aiohttp names the URL, whose query may hold a key too.
                [*secrets, urlsplit(provider.base_url).query],
            ),
        )
    else:
        try:
            return build_result(provider, status, raw, retry_after, time_left())
        except ApplicationError as exc:
            error = provider_error(
                exc.type or PROVIDER_UNAVAILABLE, scrub(exc.message, secrets), exc.next_retry_delay
            )
    log.warning(
        "chat provider call failed: %s",
        error.message,
        extra={"provider": provider.name, "reason": error.type},
    )
    # Raised outside the except blocks: no exception chain (which could
    # hold request details) travels into the activity failure.
    raise error


class ChatAgent:
    name = "chat"

    def __init__(self, providers_file: Path | None = None) -> None:
        # The runner gives the settings' providers file through configure();
        # the file is read again at each call (a ConfigMap update applies
        # without a restart).
        self.providers_file = providers_file

    def configure(self, settings: Settings) -> None:
        """Check the providers file once, when the runner starts.

        A file that cannot be read or parsed is fatal (ProviderConfigError,
        naming the file, never a key): a runner that starts with it would look
        healthy and fail every chat execution. A key file not there yet is a
        warning only: Secrets may be mounted after the container starts, and
        keys are read at each call.
        """
        self.providers_file = settings.providers_file
        if self.providers_file is None:
            log.warning(
                "the chat agent has no providers: chat executions on this runner fail "
                f"until {PROVIDERS_FILE_ENV} names a providers file"
            )
            return
        providers = load_providers(self.providers_file)
        for provider in providers.values():
            key = provider.api_key_file
            if key is not None and not key.is_file():
                log.warning(
                    "a provider's apiKeyFile is not there (yet): its calls fail until it is",
                    extra={"provider": provider.name, "api_key_file": str(key)},
                )
        log.info(
            "chat providers",
            extra={"providers_file": str(self.providers_file), "providers": sorted(providers)},
        )

    async def run(self, request: AgentRequest) -> AgentResult:
        call = build_chat_call(request)
        if self.providers_file is None:
            raise AgentFailed(
                f"the chat agent has no providers on this runner: set {PROVIDERS_FILE_ENV}"
            )
        try:
            # Was valid at startup: broken since (a bad ConfigMap update) is
            # for the platform team to fix, and retrying cannot.
            providers = load_providers(self.providers_file)
        except ProviderConfigError as exc:
            raise AgentFailed(str(exc)) from None
        provider = choose_provider(providers, call.provider)
        try:
            api_key = provider.read_api_key()
        except ProviderConfigError as exc:
            error = ApplicationError(
                str(exc),
                type=PROVIDER_KEY_UNREADABLE,
                next_retry_delay=KEY_RETRY_DELAY,
                category=ApplicationErrorCategory.BENIGN,
            )
        else:
            # spec.limits.maxTokens: the answer may use no more than is left,
            # and an answer that went past it stops the agent (BudgetExceeded).
            budget = current_budget()
            limit = budget.cap(call.body.get("max_tokens"))
            if limit is not None:
                call.body["max_tokens"] = limit
            result = await call_provider(provider, api_key, call.body)
            budget.charge(result.usage)
            return result
        log.warning("chat provider key unreadable: %s", error.message)
        raise error
