"""How a Temporal client is made from the settings, and a fingerprint of the
files that went into it (a rotated TLS file or API key changes it)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, TLSConfig
from temporalio.converter import DataConverter
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from agentexec.logs import RateLimitFilter
from agentexec.settings import TemporalSettings


@functools.cache
def forwarding_runtime() -> Runtime:
    """An SDK runtime whose Rust-core logs go to Python logging, rate-limited.

    Without forwarding the core writes to stderr, once per poll retry during an
    outage.
    """
    core = logging.getLogger("temporalio.core")
    core.addFilter(RateLimitFilter(period=30.0))
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=core),
            )
        )
    )


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


async def dial(
    settings: TemporalSettings,
    identity: str | None = None,
    data_converter: DataConverter = DataConverter.default,
) -> Client:
    """A connected client (eager: a lazy one cannot host workers), or the dial's error."""
    s = settings
    tls: bool | TLSConfig = False
    if s.uses_tls:
        tls = TLSConfig(
            server_root_ca_cert=_read(s.tls_ca_file),
            client_cert=_read(s.tls_cert_file),
            client_private_key=_read(s.tls_key_file),
            domain=s.tls_server_name,
        )
    api_key = _read(s.api_key_file)
    kwargs: dict[str, Any] = {}
    if identity:
        kwargs["identity"] = identity
    # connect_timeout alone does not bound a dial to a port that accepts
    # and never answers (measured: 30 s); this deadline does.
    async with asyncio.timeout(s.connect_timeout):
        return await Client.connect(
            s.address,
            namespace=s.namespace,
            tls=tls,
            api_key=api_key.decode().strip() if api_key else None,
            connect_timeout=timedelta(seconds=s.connect_timeout),
            runtime=forwarding_runtime(),
            data_converter=data_converter,
            **kwargs,
        )


def fingerprint(settings: TemporalSettings) -> tuple[str, str]:
    """Hashes of the TLS files and of the API key file, as they are now."""
    s = settings
    tls = hashlib.sha256()
    for path in (s.tls_ca_file, s.tls_cert_file, s.tls_key_file):
        with contextlib.suppress(OSError):
            tls.update(_read(path) or b"-")
    key = b""
    with contextlib.suppress(OSError):
        key = _read(s.api_key_file) or b""
    return tls.hexdigest(), hashlib.sha256(key).hexdigest()
