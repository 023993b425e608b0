"""Workflows and activities the manager tests run through supervised workers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow


@dataclass
class ActivityLog:
    """What the activities did, seen by the test in the same process."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float | None = None
    cancelled: bool = False
    attempts: list[int] = field(default_factory=list)  # activity.info().attempt of each start


LOGS: dict[str, ActivityLog] = {}


@activity.defn
async def echo(text: str) -> str:
    return text


@activity.defn
async def slow(key: str, seconds: float) -> str:
    log = LOGS.setdefault(key, ActivityLog())
    log.attempts.append(activity.info().attempt)
    log.started.set()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            activity.heartbeat()
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        log.cancelled = True
        raise
    log.finished_at = time.monotonic()
    return key


@workflow.defn
class EchoWorkflow:
    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(
            "echo", text, start_to_close_timeout=timedelta(seconds=30), result_type=str
        )


@workflow.defn
class SlowWorkflow:
    @workflow.run
    async def run(self, key: str, seconds: float) -> str:
        return await workflow.execute_activity(
            "slow",
            args=[key, seconds],
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=10),
            result_type=str,
        )
