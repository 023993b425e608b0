"""The e2e fixture gives a real, RBAC-enforcing API server that serves our CRD."""

from __future__ import annotations

from pathlib import Path

from localenv.binaries import ROOT
from localenv.kube import ControlPlane

CRD = ROOT / "crds" / "agentexecutions.agentexec.io.yaml"


def install_crd(plane: ControlPlane, path: Path = CRD) -> None:
    plane.kubectl("apply", "--server-side", "-f", str(path))
    plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/agentexecutions.agentexec.io"
    )


def test_serves_api_resources(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("api-resources", "-o", "name").stdout.split()
    assert "namespaces" in out
    assert "customresourcedefinitions.apiextensions.k8s.io" in out


def test_applies_the_crd_and_enforces_its_schema(
    control_plane: ControlPlane, namespace: str
) -> None:
    install_crd(control_plane)
    names = control_plane.kubectl("api-resources", "--api-group=agentexec.io", "-o", "name").stdout
    assert "agentexecutions.agentexec.io" in names

    control_plane.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "echo.yaml"))
    created = control_plane.kubectl_json("get", "-n", namespace, "aex", "hello-echo")
    # No schema default for the deadline: unset, the Agent's applies (else
    # 3600); backoffLimit and suspend default as a Job's do.
    assert created["spec"] == {
        "agent": "echo",
        "message": "Hello from agentexec",
        "backoffLimit": 2,
        "suspend": False,
    }

    bad = """
apiVersion: agentexec.io/v1alpha1
kind: AgentExecution
metadata: {name: no-message}
spec: {agent: echo}
"""
    refused = control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=bad, check=False)
    assert refused.returncode != 0
    assert "spec.message: Required value" in refused.stderr


def test_rbac_refuses_an_unprivileged_identity(control_plane: ControlPlane, namespace: str) -> None:
    install_crd(control_plane)
    as_nobody = ("--as=system:serviceaccount:default:nobody",)
    refused = control_plane.kubectl("get", "-n", namespace, "aex", *as_nobody, check=False)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr
    assert 'cannot list resource "agentexecutions"' in refused.stderr

    # The same identity, once granted, is allowed: the refusal was RBAC's.
    control_plane.kubectl(
        "create", "role", "aex-reader", "-n", namespace,
        "--verb=list", "--resource=agentexecutions.agentexec.io",
    )  # fmt: skip
    control_plane.kubectl(
        "create", "rolebinding", "aex-reader", "-n", namespace,
        "--role=aex-reader", "--serviceaccount=default:nobody",
    )  # fmt: skip
    allowed = control_plane.kubectl("get", "-n", namespace, "aex", *as_nobody, check=False)
    assert allowed.returncode == 0, allowed.stderr
