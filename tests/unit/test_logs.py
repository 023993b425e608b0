from __future__ import annotations

import json
import logging

from agentexec.logs import JsonFormatter, RateLimiter


def test_rate_limiter_holds_back_repeats_and_counts_them() -> None:
    now = [0.0]
    limiter = RateLimiter(period=30, clock=lambda: now[0])
    assert limiter.allow("probe") == 0
    assert [limiter.allow("probe") for _ in range(5)] == [None] * 5
    assert limiter.allow("other") == 0
    now[0] = 31.0
    assert limiter.allow("probe") == 5


def test_json_lines_carry_structured_fields() -> None:
    record = logging.makeLogRecord(
        {"msg": "reconnected", "levelno": 20, "levelname": "INFO", "name": "agentexec.temporal"}
    )
    record.address = "t:7233"
    record.attempt = 3
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "reconnected"
    assert (line["address"], line["attempt"]) == ("t:7233", 3)


def test_kopf_extras_are_compacted() -> None:
    record = logging.makeLogRecord({"msg": "Handler 'observe' succeeded.", "name": "kopf.objects"})
    record.settings = object()
    record.k8s_skip = True
    record.k8s_ref = {"kind": "AgentExecution", "namespace": "ns", "name": "a", "uid": "u"}
    line = json.loads(JsonFormatter().format(record))
    assert "settings" not in line
    assert "k8s_skip" not in line
    assert line["object"] == "ns/a"


def test_json_time_has_milliseconds_and_the_zone() -> None:
    record = logging.makeLogRecord({"msg": "x", "created": 1796000000.25})
    line = json.loads(JsonFormatter().format(record))
    assert line["time"] == "2026-11-30T00:53:20.250+00:00"


def test_the_expected_startup_retry_is_not_an_error() -> None:
    from agentexec.logs import ExpectedStartupRetry

    record = logging.makeLogRecord(
        {"msg": "Request attempt #1/9 failed; will retry: GET ... 503 "
         "apiserver is shutting down or storage is (re)initializing", "levelno": 40,
         "levelname": "ERROR"}
    )  # fmt: skip
    assert ExpectedStartupRetry().filter(record)
    assert record.levelname == "INFO"
    other = logging.makeLogRecord({"msg": "real trouble", "levelno": 40, "levelname": "ERROR"})
    ExpectedStartupRetry().filter(other)
    assert other.levelname == "ERROR"
