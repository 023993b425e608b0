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
