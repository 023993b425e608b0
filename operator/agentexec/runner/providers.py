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
      azure:
        baseURL: https://example.openai.azure.com/openai/deployments/gpt-4o
        apiKeyFile: /var/run/agentexec/providers/azure/apiKey
        apiKeyHeader: api-key          # the key as is in this header (Azure OpenAI)
        caFile: /etc/agentexec/ca/ca.crt   # trust this CA bundle (only) for it

The API key is read from its file at each call, so a rotated Secret is used
as soon as the kubelet updates the mount; nothing reads Secrets through the
Kubernetes API, and the key is never part of a request, a result or a log.
By default it is sent as ``Authorization: Bearer <key>``; ``apiKeyHeader``
names another header, which carries the key as is.

Calls go through ``HTTPS_PROXY`` / ``HTTP_PROXY`` unless ``NO_PROXY`` names
the provider's host (the settings read them; resolved here per provider, with
the standard library's own NO_PROXY matching). ``caFile`` is a PEM bundle,
e.g. a private CA mounted from a ConfigMap; it replaces the system roots for
that provider and is read again when it changes.

This module also makes the HTTP session a provider is called with
(:func:`create_session`): proxy, TLS verification, credentials and timeout in
one place.
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agentexec.runner.config import config_entries, read_config_file
from agentexec.settings import ProxySettings

PROVIDERS_FILE_ENV = "AGENTEXEC_PROVIDERS_FILE"
# Without streaming, the longest one request may take: the OpenAI SDK's
# default (10 minutes). It was 60 s, which cut slow models off mid-answer.
DEFAULT_TIMEOUT_SECONDS = 600.0
# Streaming, the longest silence (no byte, not even a keep-alive) before a
# request is taken for stalled, closed and re-sent. A model that is slow but
# streams is never cut; one that thinks silently for longer needs more.
DEFAULT_STALL_TIMEOUT_SECONDS = 120.0
AUTHORIZATION = "Authorization"
FIELDS = frozenset(
    {
        "baseURL",
        "apiKeyFile",
        "apiKeyHeader",
        "caFile",
        "timeoutSeconds",
        "headers",
        "stream",
        "stallTimeoutSeconds",
    }
)
# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


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
    # The header that carries the key: Authorization (as "Bearer <key>"), or
    # another (the key as is: Azure OpenAI's "api-key").
    api_key_header: str = AUTHORIZATION
    # A PEM bundle to verify the provider's certificate with, instead of the
    # system roots (a private CA).
    ca_file: Path | None = None
    # The proxy to reach it through (from HTTPS_PROXY/HTTP_PROXY, unless
    # NO_PROXY names its host); None: directly.
    proxy: str | None = None

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """The header(s) that carry ``api_key`` (none without a key)."""
        if api_key is None:
            return {}
        if self.api_key_header.lower() == AUTHORIZATION.lower():
            return {AUTHORIZATION: f"Bearer {api_key}"}
        return {self.api_key_header: api_key}

    def credential_problems(self) -> list[str]:
        """What is missing for this provider to be called, for --check-config."""
        problems = []
        for what, path in (("apiKeyFile", self.api_key_file), ("caFile", self.ca_file)):
            if path is None:
                continue
            try:
                empty = path.stat().st_size == 0
            except OSError as exc:
                problems.append(
                    f"provider {self.name!r}: {what} {str(path)!r} cannot be read "
                    f"({exc.strerror or type(exc).__name__}); is it mounted?"
                )
                continue
            if empty:
                problems.append(f"provider {self.name!r}: {what} {str(path)!r} is empty")
        return problems

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


def proxy_for(url: str, proxies: ProxySettings | None) -> str | None:
    """The proxy ``url`` is reached through: HTTPS_PROXY for https, HTTP_PROXY
    for http, none when NO_PROXY names its host (urllib's matching: suffixes,
    host:port, "*")."""
    if proxies is None:
        return None
    parts = urlsplit(url)
    proxy = proxies.https if parts.scheme == "https" else proxies.http
    if proxy is None or not parts.hostname:
        return None
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    # The matching urllib.request.proxy_bypass (and so aiohttp's trust_env)
    # does on POSIX, given our settings' NO_PROXY instead of os.environ.
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if proxies.no_proxy and bypass(host, {"no": proxies.no_proxy}):
        return None
    return proxy


def parse_providers(
    data: Any, source: str = "the providers file", proxies: ProxySettings | None = None
) -> dict[str, Provider]:
    """The providers a decoded providers file names; ProviderConfigError says what is wrong."""
    providers: dict[str, Provider] = {}
    entries = config_entries(data, "providers", "provider", FIELDS, source, ProviderConfigError)
    for name, entry, where in entries:
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
        key_header = entry.get("apiKeyHeader", AUTHORIZATION)
        if not isinstance(key_header, str) or not _HEADER_NAME.match(key_header):
            raise ProviderConfigError(f"{where}: apiKeyHeader must be an HTTP header name")
        if key_header.lower() in {h.lower() for h in headers}:
            raise ProviderConfigError(f"{where}: headers must not set apiKeyHeader {key_header!r}")
        ca_file = entry.get("caFile")
        if ca_file is not None and not (isinstance(ca_file, str) and ca_file):
            raise ProviderConfigError(f"{where}: caFile must be a path")
        if ca_file and not base_url.startswith("https://"):
            raise ProviderConfigError(f"{where}: caFile is for an https:// baseURL")
        providers[name] = Provider(
            name=name,
            base_url=base_url.rstrip("/"),
            api_key_file=Path(key_file) if key_file else None,
            timeout_seconds=timeout,
            headers=dict(headers),
            api_key_header=key_header,
            ca_file=Path(ca_file) if ca_file else None,
            proxy=proxy_for(base_url, proxies),
            stream=stream,
            stall_timeout_seconds=stall,
        )
    return providers


def _positive(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ProviderConfigError(f"{where}: {key} must be a positive number of seconds")
    return float(value)


def load_providers(path: Path, proxies: ProxySettings | None = None) -> dict[str, Provider]:
    """Read and parse the providers file (YAML, or JSON, which is YAML too)."""
    data = read_config_file(path, "the providers file", ProviderConfigError)
    return parse_providers(data, f"the providers file {str(path)!r}", proxies)


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
                    **(
                        {"apiKeyHeader": p.api_key_header}
                        if p.api_key_header != AUTHORIZATION
                        else {}
                    ),
                    **({"caFile": str(p.ca_file)} if p.ca_file else {}),
                    "stream": p.stream,
                    "stallTimeoutSeconds": p.stall_timeout_seconds,
                }
                for p in providers.values()
            }
        },
        indent=2,
    )


# SSL contexts by CA file and its (inode, mtime, size): a rotated bundle is
# loaded again, an unchanged one is not parsed at every call.
_contexts: dict[tuple[str, int, int, int], ssl.SSLContext] = {}


def build_ssl_context(provider: Provider) -> ssl.SSLContext | bool:
    """How the provider's certificate is verified: its caFile alone, or the
    system roots (True). ProviderConfigError when the caFile cannot be used."""
    if provider.ca_file is None:
        return True
    try:
        st = provider.ca_file.stat()
        key = (str(provider.ca_file), st.st_ino, st.st_mtime_ns, st.st_size)
        if key not in _contexts:
            context = ssl.create_default_context(cafile=str(provider.ca_file))
            if len(_contexts) >= 16:  # rotated-away bundles
                _contexts.clear()
            _contexts[key] = context
        return _contexts[key]
    except (OSError, ssl.SSLError) as exc:
        raise ProviderConfigError(
            f"provider {provider.name!r}: caFile {str(provider.ca_file)!r} cannot be used "
            f"({getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or exc})"
        ) from None


def create_session(
    provider: Provider, api_key: str | None, timeout: aiohttp.ClientTimeout | None = None
) -> aiohttp.ClientSession:
    """The session one call to ``provider`` is made in: its proxy, its TLS
    verification, its credentials and its timeout (``timeout``, else the
    provider's timeoutSeconds in total). The environment is not consulted
    (trust_env off): the settings already said which proxy."""
    # A login in the proxy URL is sent as Proxy-Authorization by aiohttp;
    # its errors name that URL, login included (provider_errors.scrub removes it).
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=build_ssl_context(provider)),
        timeout=timeout or aiohttp.ClientTimeout(total=provider.timeout_seconds),
        headers=provider.auth_headers(api_key),
        proxy=provider.proxy,
        trust_env=False,
    )
