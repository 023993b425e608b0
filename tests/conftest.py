"""Fixtures shared by every tier: the tier markers and the Temporal dev server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from localenv.temporal import TemporalDevServer

TIERS = ("unit", "integration", "e2e", "node")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The folder is the tier, so `-m unit` and `make test-unit` agree.
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    """One dev server per session; tests that kill it restart it before they end."""
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def temporal(temporal_server: TemporalDevServer) -> Iterator[TemporalDevServer]:
    """The session server, guaranteed up at the start and at the end of the test."""
    if not temporal_server.running:
        temporal_server.start()
    yield temporal_server
    if not temporal_server.running:
        temporal_server.start()


@pytest.fixture
def task_queue(request: pytest.FixtureRequest) -> str:
    """A task queue no other test uses."""
    return f"tq-{request.node.name}"[:200]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.support.report import SUMMARY

    if SUMMARY:
        terminalreporter.section("scenario counts")
        for line in SUMMARY:
            terminalreporter.write_line(line)
