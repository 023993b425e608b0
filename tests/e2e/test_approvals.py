"""Approving an assistant's tool call, end to end: the AgentApproval's create
permission is the approval right (RBAC, `kubectl --as`), the approver recorded
is the API server's user name (the chart's admission policies), and the
decision reaches the waiting loop through the operator, across a restart of
the operator and of Temporal while it waits. Real servers: the control plane,
Temporal, llama.cpp's server, the MCP fixture server, the operator process
(with its in-process runner)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentexec.runner.providers import PROVIDERS_FILE_ENV, Provider, dump_providers
from localenv.helm import Helm
from localenv.kube import ControlPlane
from localenv.mcp_server import MCPServerProcess
from localenv.openai_server import MODEL, OpenAIServer
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.e2e.test_agents import apply_agent
from tests.support.waiting import eventually

APPROVER_ROLE = "rel-agentexec-operator-approver"


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    with OpenAIServer(tmp_path_factory.mktemp("openai"), n_ctx=2048) as server:
        yield server


@pytest.fixture(scope="module")
def approval_policies(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The chart's approver ClusterRole and admission policies, as it renders them."""
    rendered = Helm(control_plane, tmp_path_factory.mktemp("helm")).template(
        "--show-only", "templates/approvals.yaml"
    )
    control_plane.kubectl("apply", "--server-side", "-f", "-", stdin=rendered)


def plugin(
    plane: ControlPlane, namespace: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """`kubectl agentexec ...`, the console script the package installs."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "kubectl-agentexec"), f"--kubeconfig={plane.kubeconfig}",
         "-n", namespace, *args],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "KUBECTL": str(plane.kubectl_path), **env},
    )  # fmt: skip


def approval(approver: str, execution: str = "ask", call: str = "1-0") -> str:
    return json.dumps(
        {
            "apiVersion": "agentexec.io/v1alpha1",
            "kind": "AgentApproval",
            "metadata": {"name": f"by-{approver}-{call}"},
            "spec": {
                "execution": execution,
                "id": call,
                "decision": "Approve",
                "approver": approver,
            },
        }
    )


async def test_an_approver_with_the_permission_approves_and_the_loop_goes_on(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: Any,
    openai_server: OpenAIServer,
    approval_policies: None,
    tmp_path: Path,
) -> None:
    mcp = MCPServerProcess(tmp_path)
    mcp.start()
    providers = tmp_path / "providers.json"
    providers.write_text(dump_providers({"local": Provider("local", openai_server.base_url)}))
    operator = make_operator(**{PROVIDERS_FILE_ENV: str(providers)})
    control_plane.kubectl(
        "create", "rolebinding", "approvers", "-n", namespace,
        f"--clusterrole={APPROVER_ROLE}", "--user=alice",
    )  # fmt: skip
    try:
        apply_agent(
            control_plane, namespace, "helper",
            type="assistant", model=MODEL, provider="local", maxSteps=2,
            parameters={"toolChoice": "add", "maxTokens": 64, "temperature": 0},
            tools=[{"name": "fixture", "url": mcp.url, "requireApproval": ["add"]}],
            approval={"timeoutSeconds": 600, "onTimeout": "Fail"},
        )  # fmt: skip
        aex.create(control_plane, namespace, "ask", "add 2 and 3", agent="helper")
        waiting = await eventually(
            lambda: aex.get(control_plane, namespace, "ask"),
            lambda o: (o.get("status") or {}).get("pendingApproval"),
            timeout=120, interval=0.3, what="a pending approval",
        )  # fmt: skip
        assert waiting["status"]["pendingApproval"]["tool"] == "add"
        assert aex.condition(waiting, "AwaitingApproval")["status"] == "True"

        # Waiting survives the operator and Temporal going away.
        operator.stop()
        temporal.restart(down_for=2)
        operator.start()

        # Without the permission: refused by the API server (RBAC).
        refused = control_plane.kubectl(
            "create", "-n", namespace, "--as=bob", "-f", "-", stdin=approval("bob"), check=False
        )
        assert refused.returncode != 0
        assert 'cannot create resource "agentapprovals"' in refused.stderr, refused.stderr
        # The approver is who the API server says, whatever the body says
        # (an approval of a call the loop never makes: it decides nothing).
        control_plane.kubectl(
            "create", "-n", namespace, "--as=alice", "-f", "-",
            stdin=approval("mallory", call="9-9"),
        )  # fmt: skip
        stored = control_plane.kubectl_json(
            "get", "-n", namespace, "agentapproval", "by-mallory-9-9"
        )
        assert stored["spec"]["approver"] == "alice"
        # The permitted user approves the pending call with the plugin.
        approved = plugin(control_plane, namespace, "--as=alice", "approve", "ask", "--reason=ok")
        assert approved.returncode == 0, approved.stderr
        assert "call 1-0 (tool 'add') of ask approved" in approved.stdout, approved.stdout
        created = approved.stdout.strip().rsplit("agentapproval/", 1)[1]

        done = await eventually(
            lambda: aex.get(control_plane, namespace, "ask"),
            lambda o: aex.phase(o) in ("Succeeded", "Failed"),
            timeout=120, interval=0.3, what="ask finished",
        )  # fmt: skip
        assert aex.phase(done) == "Succeeded", aex.summary(done)
        status = done["status"]
        assert status["lastApproval"]["approver"] == "alice"
        assert status["lastApproval"]["decision"] == "Approved"
        assert "pendingApproval" not in status  # a merge patch of null removes it
        assert aex.condition(done, "AwaitingApproval")["status"] == "False"
        assert status["progress"]["current"] == "done"
        assert [c["tool"] for c in mcp.calls()] == ["add"]
        events = control_plane.kubectl_json("get", "events", "-n", namespace)["items"]
        reasons = {e["reason"]: e["message"] for e in events}  # type: ignore[index]
        assert "alice" in reasons["Approved"], reasons
        assert "ApprovalRequested" in reasons
        steps = plugin(control_plane, namespace, "steps", "ask", TEMPORAL_ADDRESS=temporal.address)
        assert steps.returncode == 0, steps.stderr
        assert "approval add" in steps.stdout, steps.stdout
        applied = control_plane.kubectl_json("get", "-n", namespace, "agentapproval", created)
        assert applied["status"]["conditions"][0]["status"] == "True"
    finally:
        mcp.stop()
