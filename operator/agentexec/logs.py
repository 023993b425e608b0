"""Logging: structured lines, and rate limits for what repeats during outages."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed as `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


# kopf passes its whole OperatorSettings and object reference as extras.
_DROPPED = {"settings", "k8s_skip"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in _DROPPED}
    ref = fields.pop("k8s_ref", None)
    if isinstance(ref, dict):
        fields["object"] = f"{ref.get('namespace', '')}/{ref.get('name', '')}".lstrip("/")
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            # RFC 3339 with milliseconds and the zone, as log pipelines parse it.
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(record_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        base = super().format(record)
        if not fields:
            return base
        return base + " " + " ".join(f"{k}={v}" for k, v in fields.items())


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kopf logs "Handler 'observe' succeeded" per watch event at INFO: noise.
    logging.getLogger("kopf.objects").setLevel(max(logging.getLevelName(level), logging.WARNING))
    for name in ("kopf._core.reactor.queueing", "kopf._cogs.clients.watching", "kopf"):
        logging.getLogger(name).addFilter(ExpectedStartupRetry())


class ExpectedStartupRetry(logging.Filter):
    """kopf logs the API server's "storage is (re)initializing" answer to its
    first list (right after a CRD is established; kopf retries a second later)
    as an ERROR. It is expected and harmless: say it at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "is (re)initializing" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = None
        return True


class RateLimiter:
    """Allows one event per key per ``period``; counts the ones it held back.

    ``allow`` returns None when the event is held back, else how many were
    held back since the last allowed one (so the line can say "+N similar").
    """

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def reset(self, key: str) -> None:
        self._last.pop(key, None)
        self._held.pop(key, None)


class RateLimitFilter(logging.Filter):
    """Drops repeats of the same message from a logger within ``period``.

    Used on the Temporal SDK core's forwarded logs, which repeat once per
    poll retry during an outage.
    """

    def __init__(self, period: float = 30.0) -> None:
        super().__init__()
        self._limiter = RateLimiter(period)

    def filter(self, record: logging.LogRecord) -> bool:
        held = self._limiter.allow(f"{record.levelno}:{record.msg}")
        if held is None:
            return False
        if held:
            record.suppressed_repeats = held
        return True
