"""The e2e tier: a real control plane (etcd + kube-apiserver) for the session."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from localenv.binaries import ROOT
from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.support.operator import OperatorProcess


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("kube"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> str:
    """A namespace of the test's own, so tests never see each other's objects."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    name = f"t-{name}-{abs(hash(request.node.nodeid)) % 10_000}"
    core = k8s.CoreV1Api(control_plane.api)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


CRD = ROOT / "crds" / "agentexecutions.agentexec.io.yaml"
AGENT_CRD = ROOT / "crds" / "agents.agentexec.io.yaml"
POLICY_CRD = ROOT / "crds" / "executionpolicies.agentexec.io.yaml"
APPROVAL_CRD = ROOT / "crds" / "agentapprovals.agentexec.io.yaml"


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> None:
    """The CRDs: AgentExecution, the Agent it may name, the ExecutionPolicy
    of its namespace."""
    """The CRDs: AgentExecution, the Agent it may name, the AgentApproval it may wait for."""
    for path in (CRD, AGENT_CRD, APPROVAL_CRD, POLICY_CRD):
        control_plane.kubectl("apply", "--server-side", "-f", str(path))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s",
        "crd/agentexecutions.agentexec.io", "crd/agents.agentexec.io",
        "crd/agentapprovals.agentexec.io", "crd/executionpolicies.agentexec.io",
    )  # fmt: skip


@pytest.fixture
def refusing_temporal(tmp_path: Path) -> Iterator[TemporalDevServer]:
    """A Temporal that refuses every start of ours (workflow IDs longer than it
    allows): it answers, so this is not an outage."""
    strict = TemporalDevServer(
        tmp_path / "strict", extra_args=("--dynamic-config-value", "limit.maxIDLength=100")
    )
    strict.start()
    try:
        yield strict
    finally:
        strict.stop()


@pytest.fixture
def make_operator(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    crd: None,
    tmp_path: Path,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Operator processes watching the test's namespace, on its own task queues."""
    started: list[OperatorProcess] = []

    def make(start: bool = True, **env: str) -> OperatorProcess:
        op = OperatorProcess(
            tmp_path / f"operator-{len(started)}",
            control_plane.kubeconfig,
            env.pop("TEMPORAL_ADDRESS", temporal.address),
            namespace,
            env,
        )
        started.append(op)
        if start:
            op.start()
        return op

    yield make
    for op in started:
        op.stop()
