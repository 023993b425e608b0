"""Model providers, configured where the runner runs (never in a resource).

A providers file (YAML or JSON; its path in ``AGENTEXEC_PROVIDERS_FILE``)
names each OpenAI-compatible endpoint an agent may call::

    providers:
      local:
        baseURL: http://llama.example:8080/v1
        apiKeyFile: /var/run/agentexec/providers/local/apiKey  # a mounted Secret
        headers: {X-Team: agents}
        stallTimeoutSeconds: 120  # streamed: no byte for this long and it is re-sent
        # stream: false           # a provider that cannot stream: one answer, bounded by
        # timeoutSeconds: 600     #   timeoutSeconds (the OpenAI SDK's 10 minutes)

The API key is read from its file at each call, so a rotated Secret is used
as soon as the kubelet updates the mount; nothing reads Secrets through the
Kubernetes API, and the key is never part of a request, a result or a log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROVIDERS_FILE_ENV = "AGENTEXEC_PROVIDERS_FILE"
# Without streaming, the longest one request may take: the OpenAI SDK's
# default (10 minutes). It was 60 s, which cut slow models off mid-answer.
DEFAULT_TIMEOUT_SECONDS = 600.0
# Streaming, the longest silence (no byte, not even a keep-alive) before a
# request is taken for stalled, closed and re-sent. A model that is slow but
# streams is never cut; one that thinks silently for longer needs more.
DEFAULT_STALL_TIMEOUT_SECONDS = 120.0
FIELDS = {"baseURL", "apiKeyFile", "timeoutSeconds", "headers", "stream", "stallTimeoutSeconds"}


class ProviderConfigError(ValueError):
    """The providers file, or a provider in it, cannot be used as written."""


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    api_key_file: Path | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # one request, when not streamed
    headers: Mapping[str, str] = field(default_factory=dict)
    stream: bool = True  # Chat Completions streaming (stream: true)
    stall_timeout_seconds: float = DEFAULT_STALL_TIMEOUT_SECONDS  # streamed: longest silence

    def read_api_key(self) -> str | None:
        """The key as the mounted Secret has it now (None: the provider needs none)."""
        if self.api_key_file is None:
            return None
        try:
            key = self.api_key_file.read_text().strip()
        except OSError as exc:
            raise ProviderConfigError(
                f"provider {self.name!r}: cannot read apiKeyFile {str(self.api_key_file)!r} "
                f"({exc.strerror or type(exc).__name__}); is its Secret mounted?"
            ) from None
        if not key:
            raise ProviderConfigError(
                f"provider {self.name!r}: apiKeyFile {str(self.api_key_file)!r} is empty"
            )
        return key


def parse_providers(data: Any, source: str = "the providers file") -> dict[str, Provider]:
    """The providers a decoded providers file names; ProviderConfigError says what is wrong."""
    if not isinstance(data, Mapping) or not isinstance(data.get("providers"), Mapping):
        raise ProviderConfigError(f"{source}: expected a mapping under 'providers'")
    providers: dict[str, Provider] = {}
    for name, entry in data["providers"].items():
        where = f"{source}: provider {name!r}"
        if not isinstance(entry, Mapping):
            raise ProviderConfigError(f"{where}: expected a mapping")
        unknown = set(entry) - FIELDS
        if unknown:
            raise ProviderConfigError(f"{where}: unknown fields {sorted(unknown)}")
        base_url = entry.get("baseURL")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ProviderConfigError(f"{where}: baseURL must be an http(s) URL")
        key_file = entry.get("apiKeyFile")
        if key_file is not None and not (isinstance(key_file, str) and key_file):
            raise ProviderConfigError(f"{where}: apiKeyFile must be a path")
        timeout = _positive(entry, "timeoutSeconds", DEFAULT_TIMEOUT_SECONDS, where)
        stall = _positive(entry, "stallTimeoutSeconds", DEFAULT_STALL_TIMEOUT_SECONDS, where)
        stream = entry.get("stream", True)
        if not isinstance(stream, bool):
            raise ProviderConfigError(f"{where}: stream must be true or false")
        headers = entry.get("headers") or {}
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ProviderConfigError(f"{where}: headers must map names to strings")
        providers[str(name)] = Provider(
            name=str(name),
            base_url=base_url.rstrip("/"),
            api_key_file=Path(key_file) if key_file else None,
            timeout_seconds=timeout,
            headers=dict(headers),
            stream=stream,
            stall_timeout_seconds=stall,
        )
    return providers


def _positive(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ProviderConfigError(f"{where}: {key} must be a positive number of seconds")
    return float(value)


def load_providers(path: Path) -> dict[str, Provider]:
    """Read and parse the providers file (YAML, or JSON, which is YAML too)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProviderConfigError(
            f"cannot read the providers file {str(path)!r} ({exc.strerror or exc})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Not str(exc): it quotes the offending line, which may hold a header's value.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ProviderConfigError(
            f"the providers file {str(path)!r} is not YAML{where}: {problem}"
        ) from None
    return parse_providers(data, f"the providers file {str(path)!r}")


def dump_providers(providers: Mapping[str, Provider]) -> str:
    """A providers file naming ``providers`` (for make run and the tests)."""
    return json.dumps(
        {
            "providers": {
                p.name: {
                    "baseURL": p.base_url,
                    **({"apiKeyFile": str(p.api_key_file)} if p.api_key_file else {}),
                    "timeoutSeconds": p.timeout_seconds,
                    **({"headers": dict(p.headers)} if p.headers else {}),
                    "stream": p.stream,
                    "stallTimeoutSeconds": p.stall_timeout_seconds,
                }
                for p in providers.values()
            }
        },
        indent=2,
    )
