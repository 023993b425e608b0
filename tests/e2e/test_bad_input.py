"""Malformed and hostile AgentExecutions: each is refused by the API server
with a message naming the field, or handled with nothing lost and no crash."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from localenv.kube import ControlPlane
from tests.e2e import aex
from tests.support.operator import OperatorProcess
from tests.support.waiting import eventually

OK = {"agent": "echo", "message": "hi"}
TTL = "spec.ttlSecondsAfterFinished"

REFUSED: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # (case, metadata overrides, spec, expected in the error)
    ("sessionId too long", {}, {**OK, "sessionId": "s" * 254}, "spec.sessionId: Too long"),
    ("taskQueue too long", {}, {**OK, "taskQueue": "q" * 201}, "spec.taskQueue: Too long"),
    ("agent too long", {}, {**OK, "agent": "a" * 254}, "spec.agent: Too long"),
    ("agent starts with a dash", {}, {**OK, "agent": "-echo"}, "spec.agent: Invalid value"),
    ("timeout a float", {}, {**OK, "timeoutSeconds": 1.5}, "spec.timeoutSeconds: Invalid value"),
    ("message an object", {}, {**OK, "message": {"text": "hi"}}, 'field "spec.message.text"'),
    ("sessionId a number", {}, {**OK, "sessionId": 5}, "spec.sessionId: Invalid value"),
    ("spec missing", {}, {}, "spec: Required value"),
    ("ttl negative", {}, {**OK, "ttlSecondsAfterFinished": -1}, f"{TTL}: Invalid value"),
    ("ttl a string", {}, {**OK, "ttlSecondsAfterFinished": "1h"}, f"{TTL}: Invalid value"),
    ("bad name", {"name": "Not_A_DNS_Name"}, OK, "metadata.name: Invalid value"),
    ("control chars in agent", {}, {**OK, "agent": "echo\x07"}, "spec.agent: Invalid value"),
]


def doc(meta: dict[str, Any], spec: dict[str, Any]) -> str:
    body: dict[str, Any] = {
        "apiVersion": "agentexec.io/v1alpha1",
        "kind": "AgentExecution",
        "metadata": {"name": "bad", **meta},
    }
    if spec:
        body["spec"] = spec
    return json.dumps(body)


@pytest.mark.parametrize(("case", "meta", "spec", "expected"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_naming_the_field(
    control_plane: ControlPlane,
    namespace: str,
    crd: None,
    case: str,
    meta: dict[str, Any],
    spec: dict[str, Any],
    expected: str,
) -> None:
    out = control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", stdin=doc(meta, spec), check=False
    )
    assert out.returncode != 0, f"{case}: accepted"
    assert expected in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("spec.ttlSecondsAfterFinished", "status.completionTime"),
        ("status.outputTruncated", "32 KiB"),
        ("status.outputLength", "bytes"),
        ("status.output", "32768 bytes"),
    ],
)
def test_kubectl_explain_explains_the_lifecycle_fields(
    control_plane: ControlPlane, crd: None, field: str, expected: str
) -> None:
    out = control_plane.kubectl("explain", f"agentexecutions.{field}")
    assert expected in " ".join(out.stdout.split()), out.stdout


def test_user_written_status_is_refused_or_ignored(
    control_plane: ControlPlane, namespace: str, crd: None
) -> None:
    # A status in the create body is dropped (status is a subresource).
    body = json.loads(doc({"name": "with-status"}, OK))
    body["status"] = {"phase": "Succeeded", "output": "forged"}
    control_plane.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(body))
    assert "status" not in aex.get(control_plane, namespace, "with-status")
    # A phase outside the enum, written to the status subresource, is refused.
    out = control_plane.kubectl(
        "patch", "-n", namespace, "aex", "with-status", "--subresource=status",
        "--type=merge", "-p", '{"status": {"phase": "Exploded"}}', check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "status.phase: Unsupported value" in out.stderr


HANDLED: list[tuple[str, dict[str, Any], dict[str, Any], str, str | None]] = [
    # (name, metadata extras, spec, final phase, expected output)
    ("unicode", {}, {**OK, "message": "héllo 世界 🚀 مرحبا"}, "Succeeded", "héllo 世界 🚀 مرحبا"),
    ("control-chars", {}, {**OK, "message": "a\tb\nc\x01d\x7f"}, "Succeeded", "a\tb\nc\x01d\x7f"),
    ("nul-char", {}, {**OK, "message": "before\x00after"}, "Succeeded", "before\x00after"),
    ("unicode-session", {}, {**OK, "sessionId": "セッション-1"}, "Succeeded", "hi"),
    ("odd-parameters", {}, {**OK, "parameters": {"delaySeconds": "5", "nested": {"a": [1, None]}}},
     "Succeeded", "hi"),
    ("fail-not-a-string", {}, {**OK, "parameters": {"fail": 1}}, "Failed", None),
    ("huge-labels", {"labels": {f"l{n}.example.com/k": "v" * 63 for n in range(100)}}, OK,
     "Succeeded", "hi"),
    ("huge-annotations", {"annotations": {"example.com/blob": "x" * 200_000}}, OK,
     "Succeeded", "hi"),
    ("foreign-finalizer", {"finalizers": ["example.com/keep-me"]}, OK, "Succeeded", "hi"),
    ("x" * 200, {}, OK, "Succeeded", "hi"),
    ("nobody-serves-queue", {}, {**OK, "taskQueue": "no-worker-here", "timeoutSeconds": 3},
     "Failed", None),
    ("pre-written-conditions", {}, OK, "Succeeded", "hi"),
]  # fmt: skip


async def test_odd_objects_are_handled_and_nothing_is_lost(
    control_plane: ControlPlane, namespace: str, make_operator: Callable[..., OperatorProcess]
) -> None:
    operator = make_operator()
    for name, meta, spec, _, _ in HANDLED:
        control_plane.kubectl(
            "create", "-n", namespace, "-f", "-", stdin=doc({"name": name, **meta}, spec)
        )
    # Garbage in the conditions, written by someone else before the operator got there.
    control_plane.kubectl(
        "patch", "-n", namespace, "aex", "pre-written-conditions", "--subresource=status",
        "--type=merge", "-p",
        json.dumps({"status": {"conditions": [{"type": "Audited", "status": "True"}]}}),
    )  # fmt: skip
    # Deleted while it is being created: must not be left running in Temporal.
    aex.create(control_plane, namespace, "short-lived", "bye", parameters={"delaySeconds": 60})
    control_plane.kubectl("delete", "-n", namespace, "aex", "short-lived", "--wait=false")

    for name, _, _, phase, output in HANDLED:
        obj = await eventually(
            lambda n=name: aex.get(control_plane, namespace, n),
            lambda o, p=phase: aex.phase(o) == p,
            timeout=60,
            what=f"{name[:40]} {phase}",
        )
        if output is not None:
            assert obj["status"]["output"] == output, name
    kept = aex.get(control_plane, namespace, "pre-written-conditions")
    assert aex.condition(kept, "Audited") == {"type": "Audited", "status": "True"}
    timed_out = aex.get(control_plane, namespace, "nobody-serves-queue")
    # Nobody ever took the agent: its own reason, not a plain timeout.
    assert timed_out["status"]["error"]["reason"] == "NoRunner"

    await eventually(
        lambda: (
            control_plane.kubectl(
                "get", "-n", namespace, "aex", "short-lived", check=False
            ).returncode
        ),
        lambda rc: rc != 0,
        what="short-lived deleted",
    )
    # The foreign finalizer is not ours to remove; ours is.
    control_plane.kubectl("delete", "-n", namespace, "aex", "foreign-finalizer", "--wait=false")
    lingering = await eventually(
        lambda: aex.get(control_plane, namespace, "foreign-finalizer"),
        lambda o: o["metadata"].get("finalizers") == ["example.com/keep-me"],
        what="only the foreign finalizer left",
    )
    assert lingering["metadata"]["deletionTimestamp"]
    assert operator.running, operator.log_tail()
    # Failing agents log their activity failure; no handler of ours may fail.
    assert "failed with an exception" not in operator.log()
