"""A provider's failures: what went wrong on a request, classified and said safely.

Each failure is a ``ProviderFailure`` of one kind (temporal/types.py):
``RateLimited`` (429) and ``ProviderUnavailable`` (408, 5xx, a connection
that failed or stalled) may be re-sent; ``ProviderRejected`` (another 4xx),
``ContextTooLong`` and ``ContentFiltered`` (where the provider says so) and
``ProviderInvalidResponse`` may not. The message carries the provider's own
words however it shapes its error body, with every credential scrubbed out,
including what looks like one the provider echoed back. What the activity
raises for it is ``provider_error``'s ApplicationError.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.runner.providers import Provider
from agentexec.temporal.types import (
    CONTENT_FILTERED,
    CONTEXT_TOO_LONG,
    PROVIDER_REJECTED,
    PROVIDER_UNAVAILABLE,
    RATE_LIMITED,
)

_DELAY_SECONDS = re.compile(r"[0-9]{1,9}")
# What providers say when the prompt does not fit the model (OpenAI's code
# context_length_exceeded, vLLM, llama.cpp's server, Anthropic's proxies).
_CONTEXT_TOO_LONG = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|too many tokens|prompt is too long"
    r"|exceeds? (the )?(available )?context",
    re.IGNORECASE,
)
_CONTENT_FILTERED = {"content_filter", "content_policy_violation", "content_filtered"}

MAX_MESSAGE = 1000  # of the provider's words in a failure message
REDACTED = "[REDACTED]"
# What a provider may echo of a credential: "Bearer xyz", "API key provided: sk-...";
# and a URL's login (aiohttp names the proxy URL, login included, in its errors).
_ECHOED = (
    re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+"),
    re.compile(r"(://[^/\s:@]+:)[^@\s/]+(?=@)"),
    re.compile(r"(?i)\b((?:api[ _-]?key|token|authorization)\b[^:=\n]{0,24}[:=]\s*\"?)[^\s\"',]+"),
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


def check_finish(provider: Provider, finish_reason: object) -> None:
    """A ProviderFailure when the provider says it stopped the answer itself
    (its content filter), whether the answer came whole or streamed."""
    if finish_reason in _CONTENT_FILTERED:
        raise ProviderFailure(
            CONTENT_FILTERED,
            f"provider {provider.name!r} stopped the answer: finish_reason {finish_reason}",
        )
