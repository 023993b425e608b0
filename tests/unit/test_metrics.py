"""What /metrics exposes besides our own series: no _created, process and build info."""

from __future__ import annotations

from prometheus_client import generate_latest

from agentexec import __version__
from agentexec.metrics import Metrics


def test_no_created_series_and_process_and_build_info() -> None:
    text = generate_latest(Metrics().registry).decode()
    assert "_created" not in text
    assert "process_resident_memory_bytes" in text
    assert f'agentexec_build_info{{version="{__version__}"}} 1.0' in text


def test_start_results_exist_before_the_first_start() -> None:
    text = generate_latest(Metrics().registry).decode()
    for result in ("started", "closed", "unavailable", "rejected"):
        assert f'agentexec_workflow_starts_total{{result="{result}"}} 0.0' in text
