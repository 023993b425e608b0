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

How the request is sent, re-sent and billed is runner/provider_call.py's;
how its answer is read (whole or streamed, tool calls put together from
their pieces), runner/answers.py's. The agent loop (Agents of type
assistant, runner/steps.py) sends its model calls with tools through the
same code (``ChatAgent.send``), with what this agent builds and chooses.

Failures say which side is at fault (docs/agents.md, "Failures and retries";
runner/provider_errors.py): ``RateLimited`` and ``ProviderUnavailable`` once
re-sending cannot go on; ``ProviderRejected`` (another 4xx),
``ContextTooLong`` and ``ContentFiltered`` (where the provider says so) and
``ProviderInvalidResponse`` (a 2xx that is no chat completion) at once.
Messages carry the provider's words, never a key. A provider this runner
does not have, or none named, fails at once (RunnerFailed); a key file that
cannot be read is retried (``ProviderKeyUnreadable``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.runner import AgentFailed
from agentexec.runner.answers import Completion
from agentexec.runner.api import current_context
from agentexec.runner.provider_call import ProviderCall, complete
from agentexec.runner.providers import (
    PROVIDERS_FILE_ENV,
    Provider,
    ProviderConfigError,
    load_providers,
)
from agentexec.settings import ProxySettings
from agentexec.temporal.types import AgentRequest, AgentResult

if TYPE_CHECKING:
    from agentexec.settings import Settings

log = logging.getLogger("agentexec.runner.chat")

# A provider's apiKeyFile could not be read at call time: retryable (its
# Secret may be mounted late, or be mid-rotation), a few seconds apart; when
# the attempts run out the execution says RunnerFailed with this message.
PROVIDER_KEY_UNREADABLE = "ProviderKeyUnreadable"
KEY_RETRY_DELAY = timedelta(seconds=5)
# spec.parameters (camelCase, as in a resource) -> the API's request fields.
OPTIONS = {
    "temperature": "temperature",
    "maxTokens": "max_tokens",
    "topP": "top_p",
    "seed": "seed",
    "stop": "stop",
}


@dataclass(frozen=True)
class ChatCall:
    """What one chat run asks of which provider (built from the request alone)."""

    provider: str | None
    body: dict[str, Any]


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
