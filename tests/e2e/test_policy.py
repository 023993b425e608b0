"""ExecutionPolicy at admission (issue #22): the chart's ValidatingAdmissionPolicy
and binding on the real API server, with two teams in two namespaces. No
webhook and no operator: the API server alone refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localenv.binaries import built_tool
from localenv.helm import CHART, Helm
from localenv.kube import ControlPlane
from localenv.procs import ManagedProcess
from tests.e2e import aex
from tests.e2e.test_agents import agent_manifest
from tests.e2e.test_chart import NO_CRDS
from tests.support.waiting import eventually


def policy(name: str, **spec: Any) -> str:
    return aex.resource("ExecutionPolicy", name, spec)


def execution(name: str, **spec: Any) -> str:
    return aex.resource("AgentExecution", name, {"agent": "chat", "message": "hi", **spec})


@pytest.fixture
def helm(control_plane: ControlPlane, tmp_path: Path) -> Helm:
    return Helm(control_plane, tmp_path / "helm")


async def policy_in_force(plane: ControlPlane, namespace: str) -> None:
    """A binding reaches the API server's admission a moment after it is
    created: wait until a server-side dry run is refused (a dry run, so no
    object is stored that a later apply would find unchanged and not send)."""

    def refused() -> bool:
        probe = execution("probe", parameters={"provider": "not-allowed"})
        out = plane.kubectl(
            "create", "--dry-run=server", "-n", namespace, "-f", "-", stdin=probe, check=False
        )
        return out.returncode != 0 and "ValidatingAdmissionPolicy" in out.stderr

    await eventually(refused, bool, timeout=30, what="the admission policy in force")


def apply(plane: ControlPlane, namespace: str, manifest: str) -> tuple[bool, str]:
    out = plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest, check=False)
    return out.returncode == 0, out.stderr.strip()


@pytest.fixture
def teams(
    control_plane: ControlPlane, helm: Helm, namespace: str, crd: None
) -> Iterator[tuple[str, str]]:
    """Team A (the test's namespace) and team B, one release watching both,
    each team with an ExecutionPolicy naming only its own provider, model
    and runner queue."""
    team_b = f"{namespace[:40]}-b"
    control_plane.kubectl("create", "namespace", team_b)
    helm.run("install", "teams", str(CHART), "-n", namespace, *NO_CRDS,
             "--set", f"watchNamespaces={{{namespace},{team_b}}}")  # fmt: skip
    for ns, team in ((namespace, "a"), (team_b, "b")):
        control_plane.kubectl("apply", "-n", ns, "-f", "-", stdin=policy(
            f"team-{team}",
            allowed={
                "providers": [f"provider-{team}"], "models": [f"model-{team}"],
                "taskQueues": [f"runner-{team}"], "agentTypes": ["chat", "echo"],
            },
        ))  # fmt: skip
    try:
        yield namespace, team_b
    finally:
        helm.run("uninstall", "teams", "-n", namespace)


async def test_a_team_naming_another_team_s_provider_model_or_queue_is_refused_at_apply(
    control_plane: ControlPlane, teams: tuple[str, str]
) -> None:
    team_a, team_b = teams
    await policy_in_force(control_plane, team_a)
    refused = {
        "provider": execution("p", parameters={"provider": "provider-b", "model": "model-a"}),
        "model": execution("m", parameters={"provider": "provider-a", "model": "model-b"}),
        "queue": execution("q", taskQueue="runner-b"),
        "agent provider": agent_manifest("ap", type="chat", model="model-a", provider="provider-b"),
        "agent model": agent_manifest("am", type="chat", model="model-b", provider="provider-a"),
        "agent queue": agent_manifest("aq", type="echo", taskQueue="runner-b"),
        "agent type": agent_manifest("at", type="shell"),
    }
    messages = {}
    for case, manifest in refused.items():
        ok, message = apply(control_plane, team_a, manifest)
        assert not ok, f"{case} was admitted"
        messages[case] = message
    rule = f"ExecutionPolicy team-a in namespace {team_a}"
    assert f"{rule}: allowed.providers does not include spec.parameters.provider provider-b " \
        "(allowed: provider-a)" in messages["provider"]  # fmt: skip
    assert (
        f"{rule}: allowed.models does not include spec.parameters.model model-b"
        in messages["model"]
    )
    assert (
        f"{rule}: allowed.taskQueues does not include spec.taskQueue runner-b" in messages["queue"]
    )
    assert (
        "allowed.providers does not include spec.provider provider-b" in messages["agent provider"]
    )
    assert "allowed.models does not include spec.model model-b" in messages["agent model"]
    assert "allowed.taskQueues does not include spec.taskQueue runner-b" in messages["agent queue"]
    assert (
        "allowed.agentTypes does not include spec.type shell (allowed: chat, echo)"
        in messages["agent type"]
    )
    assert all("ValidatingAdmissionPolicy" in m for m in messages.values()), messages

    # What each team is allowed goes through, in its own namespace only.
    for ns, team in ((team_a, "a"), (team_b, "b")):
        for manifest in (
            execution("ok", parameters={"provider": f"provider-{team}", "model": f"model-{team}"}),
            execution("ok-queue", taskQueue=f"runner-{team}"),
            agent_manifest("ok", type="chat", model=f"model-{team}", provider=f"provider-{team}"),
        ):
            ok, message = apply(control_plane, ns, manifest)
            assert ok, message
    # The install's own default runner queue is always allowed.
    own = f"{team_a}.teams-agentexec-operator-runner"
    assert apply(control_plane, team_a, execution("own-queue", taskQueue=own))[0]


async def test_a_namespace_without_a_policy_is_unrestricted(
    control_plane: ControlPlane, teams: tuple[str, str]
) -> None:
    team_a, _ = teams
    free = f"{team_a[:40]}-free"
    control_plane.kubectl("create", "namespace", free)
    await policy_in_force(control_plane, team_a)
    for manifest in (
        execution("any", parameters={"provider": "provider-b", "model": "anything"}),
        execution("any-queue", taskQueue="runner-b"),
        agent_manifest("any", type="shell", taskQueue="anywhere"),
    ):
        ok, message = apply(control_plane, free, manifest)
        assert ok, message


async def test_the_binding_takes_the_namespace_s_policies_as_parameters(
    control_plane: ControlPlane, teams: tuple[str, str], tmp_path: Path
) -> None:
    """One binding for every namespace: the parameters are the
    ExecutionPolicies of the namespace being written (no namespace in
    paramRef), and no policy means allowed."""
    binding: Any = control_plane.kubectl_json(
        "get", "validatingadmissionpolicybinding", "teams-agentexec-operator-execution-policy"
    )
    assert binding["spec"]["paramRef"] == {"selector": {}, "parameterNotFoundAction": "Allow"}
    vap: Any = control_plane.kubectl_json(
        "get", "validatingadmissionpolicy", "teams-agentexec-operator-execution-policy"
    )
    assert vap["spec"]["paramKind"] == {
        "apiVersion": "agentexec.io/v1alpha1",
        "kind": "ExecutionPolicy",
    }
    # kube-controller-manager type-checks every expression against both kinds
    # (and the parameter's schema), and says so in the policy's status.
    kcm = ManagedProcess(
        "kube-controller-manager",
        [
            str(built_tool("kube-controller-manager")),
            f"--kubeconfig={control_plane.kubeconfig}",
            "--controllers=validatingadmissionpolicy-status-controller",
            "--leader-elect=false",
            "--secure-port=0",
        ],
        tmp_path / "kube-controller-manager.log",
    )
    kcm.start()
    try:
        checked: Any = await eventually(
            lambda: control_plane.kubectl_json(
                "get", "validatingadmissionpolicy", "teams-agentexec-operator-execution-policy"
            ).get("status", {}),
            lambda status: bool(status.get("observedGeneration")),
            timeout=60,
            what="the policy type-checked",
        )
    finally:
        kcm.stop()
    assert checked.get("typeChecking", {}).get("expressionWarnings", []) == [], checked
