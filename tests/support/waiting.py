"""`eventually`: the only way tests wait."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    check: Callable[[T], object] = bool,
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Call `probe` until `check(value)` holds; return that value.

    On timeout the AssertionError shows the last value (or error) the probe
    gave, so a failure says what the test saw instead of just "timed out".
    """
    deadline = time.monotonic() + timeout
    last: Any = "<never probed>"
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if check(value):  # type: ignore[arg-type]
                return value  # type: ignore[return-value]
            last = value
        except AssertionError:
            raise
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {timeout:.1f}s; last seen: {last!r}")
        await asyncio.sleep(interval)
