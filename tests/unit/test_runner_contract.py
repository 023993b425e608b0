"""The payloads between the workflow and runners of other versions (issue #11, 4).

Encoded and decoded with the SDK's real default data converter, the one on
both ends of the wire. The recorded v0.1.0 histories supply what a released
workflow and runner actually sent. End to end on a dev server:
tests/integration/test_runner_contract.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from agentexec.temporal.attempts import progress_from
from agentexec.temporal.types import (
    RUN_AGENT_ACTIVITY,
    AgentRequest,
    AgentResult,
    AgentSpec,
    AttemptProgress,
    ExecutionRef,
    Usage,
    agent_result_from,
)

CONVERTER = DataConverter.default.payload_converter
HISTORIES = Path(__file__).resolve().parents[1] / "fixtures" / "histories"


@dataclass
class OlderRequest:
    """A runner that predates session_id, parameters and execution."""

    agent: str
    message: str


@dataclass
class StricterRequest:
    agent: str
    message: str
    tenant: str


def encode(value: Any) -> Payload:
    return CONVERTER.to_payloads([value])[0]


def decode(payload: Payload, hint: type | None = None) -> Any:
    return CONVERTER.from_payloads([payload], [hint] if hint else None)[0]


def recorded(kind: str) -> list[Payload]:
    """run_agent inputs ("input") or results ("result") from every recorded history."""
    scheduled: set[int] = set()
    found: list[Payload] = []
    for path in sorted(HISTORIES.glob("*/*.json")):
        if path.name == "manifest.json":
            continue
        for event in WorkflowHistory.from_json(path.stem, path.read_text()).events:
            if event.HasField("activity_task_scheduled_event_attributes"):
                attrs = event.activity_task_scheduled_event_attributes
                if attrs.activity_type.name == RUN_AGENT_ACTIVITY:
                    scheduled.add(event.event_id)
                    if kind == "input":
                        found.extend(attrs.input.payloads)
            if event.HasField("activity_task_completed_event_attributes"):
                done = event.activity_task_completed_event_attributes
                if kind == "result" and done.scheduled_event_id in scheduled:
                    found.extend(done.result.payloads)
    assert found, f"no recorded run_agent {kind} under {HISTORIES}"
    return found


def test_requests_of_released_workflows_decode_for_this_runner() -> None:
    for payload in recorded("input"):
        request = decode(payload, AgentRequest)
        assert isinstance(request, AgentRequest)
        assert isinstance(request.execution, ExecutionRef)
        assert request.parameters.get("scenario") == request.message


def test_results_of_released_runners_decode_for_this_workflow() -> None:
    results = [agent_result_from(decode(p)) for p in recorded("result")]
    assert {r.output for r in results} >= {"succeeded", "runner_retried", "report_retried"}


def test_an_older_runner_ignores_fields_it_does_not_know() -> None:
    request = AgentRequest(
        "echo", "hi", session_id="s", parameters={"a": 1}, execution=ExecutionRef("n", "x", "u")
    )
    assert decode(encode(request), OlderRequest) == OlderRequest("echo", "hi")


def test_an_agent_snapshot_travels_as_plain_json_and_older_runners_ignore_it() -> None:
    # The pinned shape grows optional keys: "agent_spec" (null for built-in
    # agent names), "attempt" and "resume_from" (the workflow's own attempts,
    # #19); every key it had keeps its name and meaning.
    spec = AgentSpec(
        name="helper",
        type="chat",
        model="m",
        system_prompt="be brief",
        provider="local",
        parameters={"temperature": 0.2},
        task_queue="q",
        timeout_seconds=60,
        uid="u",
        generation=2,
    )
    request = AgentRequest("chat", "hi", parameters={"temperature": 0.2}, agent_spec=spec)
    sent = json.loads(encode(request).data)
    assert sent["agent_spec"] == {
        "name": "helper",
        "type": "chat",
        "model": "m",
        "system_prompt": "be brief",
        "provider": "local",
        "parameters": {"temperature": 0.2},
        "task_queue": "q",
        "timeout_seconds": 60,
        "uid": "u",
        "generation": 2,
        "loop": None,  # an assistant's tools, maxSteps and approval (added with the loop)
    }
    assert set(sent) == {
        "agent",
        "message",
        "session_id",
        "parameters",
        "execution",
        "agent_spec",
        "attempt",
        "resume_from",
        "max_tokens",
    }
    assert decode(encode(request), AgentRequest) == request
    assert decode(encode(request), OlderRequest) == OlderRequest("chat", "hi")
    assert json.loads(encode(AgentRequest("echo", "hi")).data)["agent_spec"] is None


def test_a_request_from_an_older_workflow_gets_the_defaults() -> None:
    older = encode({"agent": "echo", "message": "hi"})
    assert decode(older, AgentRequest) == AgentRequest("echo", "hi")


def test_a_runner_requiring_a_field_never_sent_names_it() -> None:
    # The SDK reports this as "Failed decoding arguments" caused by this error;
    # the workflow puts the cause into the execution's message.
    with pytest.raises(TypeError, match="'tenant'"):
        decode(encode(AgentRequest("echo", "hi")), StricterRequest)


def test_a_result_with_a_field_added_keeps_working() -> None:
    newer = encode({"output": "hi", "tokens": 12})
    assert agent_result_from(decode(newer)) == AgentResult("hi")


def test_results_of_released_runners_have_no_usage() -> None:
    # usage came after v0.1.0: recorded results decode with its default.
    assert {agent_result_from(decode(p)).usage for p in recorded("result")} == {None}


def test_usage_is_pinned_on_the_wire() -> None:
    # External runners (any language) send this shape: the keys are the API's.
    result = AgentResult("hi", usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5))
    assert json.loads(encode(result).data) == {
        "output": "hi",
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "total_tokens": 5,
            "requests": 0,
            "resent_requests": 0,
        },
    }
    assert agent_result_from(decode(encode(result))) == result


def test_attempt_details_are_pinned_on_the_wire() -> None:
    # Heartbeats and failures of agentexec.runner carry [checkpoint, progress];
    # an external runner may send the same to have its attempts billed.
    progress = AttemptProgress(Usage(3, 2, 5, requests=1), output_chars=12)
    assert json.loads(encode(progress).data) == {
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "total_tokens": 5,
            "requests": 1,
            "resent_requests": 0,
        },
        "output_chars": 12,
    }
    assert progress_from(decode(encode(progress))) == progress
    assert progress_from({"something": "else"}) is None


def test_a_partial_usage_decodes_with_zeros() -> None:
    sent = encode({"output": "hi", "usage": {"total_tokens": 7, "cached_tokens": 1}})
    assert agent_result_from(decode(sent)).usage == Usage(total_tokens=7)


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ({"text": "hi"}, "missing 1 required positional argument: 'output'"),
        ({}, "'output'"),
        (None, "NoneType"),
        ("hi", "not dict"),
        ({"output": 42}, "Expected value to be str"),
    ],
    ids=["renamed", "empty", "null", "bare-string", "wrong-type"],
)
def test_a_result_without_a_usable_output_is_a_clear_error(sent: Any, shown: str) -> None:
    with pytest.raises(ValueError, match=RUN_AGENT_ACTIVITY) as err:
        agent_result_from(decode(encode(sent)))
    assert shown in str(err.value)
    assert json.dumps(sent) in str(err.value)  # what the runner sent, for the operator


def test_the_token_limit_travels_as_one_optional_key_older_runners_ignore() -> None:
    # spec.limits.maxTokens (#22): null without a limit.
    request = AgentRequest("chat", "hi", max_tokens=500)
    assert json.loads(encode(request).data)["max_tokens"] == 500
    assert json.loads(encode(AgentRequest("chat", "hi")).data)["max_tokens"] is None
    assert decode(encode(request), OlderRequest) == OlderRequest("chat", "hi")
