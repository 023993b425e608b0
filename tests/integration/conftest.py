"""Fixtures of the integration tier: Temporal managers that are always stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.manager import TemporalManager, WorkerSpec
from tests.integration import workflows

StartManager = Callable[[TemporalSettings], TemporalManager]


@pytest.fixture
async def start_manager(task_queue: str) -> AsyncIterator[StartManager]:
    """Start managers serving the test's workflows on its own task queue; stop them all."""
    managers: list[TemporalManager] = []

    def start(settings: TemporalSettings) -> TemporalManager:
        spec = WorkerSpec(
            task_queue=task_queue,
            workflows=[workflows.EchoWorkflow, workflows.SlowWorkflow],
            activities=[workflows.echo, workflows.slow],
        )
        manager = TemporalManager(settings, [spec], Metrics())
        managers.append(manager)
        manager.start()
        return manager

    yield start
    for manager in managers:
        await manager.stop()
