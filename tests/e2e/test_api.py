"""The API server refuses invalid AgentExecutions with a message naming the
field; kubectl shows the printer columns and explains the fields."""

from __future__ import annotations

import json
from typing import Any

import pytest

from localenv.kube import ControlPlane
from tests.e2e import aex


def doc(spec: Any, **meta: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "agentexec.io/v1alpha1",
            "kind": "AgentExecution",
            "metadata": {"name": "bad", **meta},
            "spec": spec,
        }
    )


OK = {"agent": "echo", "message": "hi"}
INVALID = [
    ("missing agent", {"message": "hi"}, "spec.agent: Required value"),
    ("missing message", {"agent": "echo"}, "spec.message: Required value"),
    ("empty message", {**OK, "message": ""}, "spec.message: Invalid value"),
    ("oversized message", {**OK, "message": "x" * (256 * 1024 + 1)}, "spec.message: Too long"),
    ("agent not a string", {**OK, "agent": 7}, "spec.agent: Invalid value"),
    ("message not a string", {**OK, "message": ["hi"]}, "spec.message: Invalid value"),
    ("timeout too small", {**OK, "timeoutSeconds": 0}, "spec.timeoutSeconds: Invalid value"),
    ("timeout too large", {**OK, "timeoutSeconds": 604801}, "spec.timeoutSeconds: Invalid value"),
    ("timeout a string", {**OK, "timeoutSeconds": "soon"}, "spec.timeoutSeconds: Invalid value"),
    ("parameters a string", {**OK, "parameters": "x"}, "spec.parameters: Invalid value"),
    ("empty task queue", {**OK, "taskQueue": ""}, "spec.taskQueue: Invalid value"),
    ("agent with spaces", {**OK, "agent": "my agent"}, "spec.agent: Invalid value"),
]


@pytest.mark.parametrize(("case", "spec", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_objects_are_refused_naming_the_field(
    control_plane: ControlPlane, namespace: str, crd: None, case: str, spec: Any, expected: str
) -> None:
    out = control_plane.kubectl("create", "-n", namespace, "-f", "-", stdin=doc(spec), check=False)
    assert out.returncode != 0, f"{case}: accepted"
    assert expected in out.stderr, out.stderr


def test_unknown_fields_are_refused_by_strict_validation(
    control_plane: ControlPlane, namespace: str, crd: None
) -> None:
    out = control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin=doc({"agent": "echo", "message": "hi", "mesage": "typo"}), check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert 'unknown field "spec.mesage"' in out.stderr


def test_spec_is_immutable(control_plane: ControlPlane, namespace: str, crd: None) -> None:
    aex.create(control_plane, namespace, "fixed", "before")
    out = control_plane.kubectl(
        "patch", "-n", namespace, "aex", "fixed", "--type=merge",
        "-p", '{"spec": {"message": "after"}}', check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "spec is immutable" in out.stderr
    assert aex.get(control_plane, namespace, "fixed")["spec"]["message"] == "before"


def test_printer_columns(control_plane: ControlPlane, namespace: str, crd: None) -> None:
    aex.create(control_plane, namespace, "shown", "x")
    header = control_plane.kubectl("get", "-n", namespace, "aex").stdout.splitlines()[0].split()
    # The workflow ID is long: -o wide shows it (tests/e2e/test_kubectl.py).
    assert header == ["NAME", "PHASE", "AGENT", "REASON", "TEMPORAL", "STEP", "AGE"]
    column = ".status.temporalConnection"
    crd = control_plane.kubectl_json("get", "crd", "agentexecutions.agentexec.io")
    columns = {
        c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]
    }  # type: ignore[index]
    # A field only unfinished executions carry: a finished one shows no stale state.
    assert columns["Temporal"] == column


def test_explain_describes_the_fields(control_plane: ControlPlane, crd: None) -> None:
    out = " ".join(control_plane.kubectl("explain", "aex.spec.message").stdout.split())
    assert "1 to 262144 characters" in out
    assert "kubectl apply --server-side" in out  # why a large message fails with apply
    deadline = " ".join(
        control_plane.kubectl("explain", "aex.spec.activeDeadlineSeconds").stdout.split()
    )
    assert "then 3600 (one hour)" in deadline
    assert "waiting for a free runner and time suspended are not counted" in deadline
    timeout = " ".join(control_plane.kubectl("explain", "aex.spec.timeoutSeconds").stdout.split())
    assert "older name of activeDeadlineSeconds" in timeout
    spec = control_plane.kubectl("explain", "aex.spec").stdout
    for field in (
        "agent", "message", "sessionId", "parameters", "taskQueue", "timeoutSeconds",
        "activeDeadlineSeconds", "backoffLimit", "suspend",
    ):  # fmt: skip
        assert field in spec
