"""The Helm chart against the real control plane: renders valid objects,
installs, refuses bad values, and grants exactly what the operator needs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.e2e import aex
from tests.support.binaries import ROOT
from tests.support.helm import CHART, EVERYTHING_ON, Helm
from tests.support.kube import ControlPlane
from tests.support.operator import OperatorProcess
from tests.support.report import SUMMARY
from tests.support.temporal import TemporalDevServer
from tests.support.waiting import eventually

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def helm(control_plane: ControlPlane, tmp_path: Path) -> Helm:
    return Helm(control_plane, tmp_path / "helm")


def test_chart_crd_is_the_crds_file() -> None:
    for crd in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_bytes() == crd.read_bytes(), crd.name


@pytest.mark.parametrize("values", [None, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_rendered_objects_pass_server_side_validation(
    control_plane: ControlPlane, helm: Helm, namespace: str, values: Path | None
) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(FIXTURES / "monitoring-crds.yaml"))
    control_plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    for ns in ("team-a", "team-b"):
        control_plane.kubectl("create", "namespace", ns, check=False)
    rendered = helm.template("--namespace", namespace, *(["-f", str(values)] if values else []))
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    assert {"Deployment", "ServiceAccount", "Service"} <= kinds
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered, check=False)
    assert out.returncode == 0, out.stderr


def test_install_creates_the_objects_and_schema_refuses_bad_values(
    control_plane: ControlPlane, helm: Helm, namespace: str
) -> None:
    refused = helm.run(
        "install", "bad", str(CHART), "-n", namespace, "--set", "replicaCount=two", check=False
    )
    assert refused.returncode != 0
    assert "replicaCount" in refused.stderr
    assert "got string, want integer" in refused.stderr
    unknown = helm.run(
        "install", "bad", str(CHART), "-n", namespace, "--set", "replicas=2", check=False
    )
    assert "additional properties 'replicas' not allowed" in unknown.stderr

    helm.run(
        "install", "aex", str(CHART), "-n", namespace, "--set", f"watchNamespaces={{{namespace}}}"
    )
    names = control_plane.kubectl(
        "get", "-n", namespace, "deploy,sa,svc,role,rolebinding", "-o", "name"
    ).stdout.split()
    assert "deployment.apps/aex-agentexec-operator" in names
    assert "serviceaccount/aex-agentexec-operator" in names
    assert "service/aex-agentexec-operator-metrics" in names
    assert "role.rbac.authorization.k8s.io/aex-agentexec-operator" in names
    deploy = control_plane.kubectl_json("get", "-n", namespace, "deploy", "aex-agentexec-operator")
    pod = deploy["spec"]["template"]["spec"]  # type: ignore[index]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["terminationGracePeriodSeconds"] > 30  # longer than the worker grace
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def service_account_kubeconfig(plane: ControlPlane, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that is the chart's ServiceAccount: a token the API server
    issued for it (kopf's login cannot impersonate, so a token it is)."""
    token = plane.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


async def test_operator_runs_with_only_the_charts_rbac(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    helm: Helm,
    namespace: str,
    crd: None,
    tmp_path: Path,
) -> None:
    helm.run(
        "install", "rbac", str(CHART), "-n", namespace, "--set", f"watchNamespaces={{{namespace}}}"
    )
    sa = f"system:serviceaccount:{namespace}:rbac-agentexec-operator"
    kubeconfig = service_account_kubeconfig(
        control_plane, namespace, "rbac-agentexec-operator", tmp_path / "sa-kubeconfig"
    )
    whoami = control_plane.kubectl(f"--kubeconfig={kubeconfig}", "auth", "whoami", "-o", "json")
    assert sa in whoami.stdout

    # A verb the chart does not grant is refused for that identity.
    denied = control_plane.kubectl(
        "delete", "-n", namespace, "aex", "anything", f"--as={sa}", check=False
    )
    assert "Forbidden" in denied.stderr
    assert 'cannot delete resource "agentexecutions"' in denied.stderr
    can = control_plane.kubectl(
        "auth", "can-i", "patch", "agentexecutions.agentexec.io/status",
        "-n", namespace, f"--as={sa}", check=False,
    )  # fmt: skip
    assert can.stdout.strip() == "yes"

    # The reference reconnection scenario, as that identity.
    temporal.kill()
    operator = OperatorProcess(tmp_path / "op", kubeconfig, temporal.address, namespace)
    operator.start()
    try:
        aex.create(control_plane, namespace, "first", "one")
        await eventually(
            lambda: aex.get(control_plane, namespace, "first"),
            lambda o: aex.phase(o) == "Pending",
            what="Pending while Temporal is down",
        )
        temporal.start()
        for name, message in (("first", "one"), ("second", "two")):
            if name == "second":
                temporal.kill()
                await asyncio.sleep(1)
                temporal.start()
                aex.create(control_plane, namespace, name, message)
            done = await eventually(
                lambda n=name: aex.get(control_plane, namespace, n),
                lambda o: aex.phase(o) == "Succeeded",
                timeout=60,
                what=f"{name} Succeeded",
            )
            assert done["status"]["output"] == message
        assert "Forbidden" not in operator.log()
    finally:
        operator.stop()


def reconciles(op: OperatorProcess) -> float:
    """How many reconciles this replica ran (its own metric)."""
    for line in op.metrics().splitlines():
        if line.startswith('agentexec_reconcile_duration_seconds_count{handler="reconcile"}'):
            return float(line.split()[-1])
    return 0.0


async def test_two_replicas_one_reconciles_and_the_other_takes_over(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    crd: None,
    make_operator: Callable[..., OperatorProcess],
) -> None:
    lease = {"AGENTEXEC_LEADER_ELECTION_LEASE_SECONDS": "6"}
    ops = [make_operator(POD_NAME=f"replica-{n}", **lease) for n in range(2)]
    leader = (
        await eventually(
            lambda: [op for op in ops if op.statusz()["leader"]["leading"]],
            lambda found: len(found) == 1,
            timeout=30,
            what="exactly one replica leading",
        )
    )[0]
    standby = next(op for op in ops if op is not leader)
    held = control_plane.kubectl_json("get", "-n", namespace, "lease", "agentexec-operator")
    assert held["spec"]["holderIdentity"] == leader.statusz()["leader"]["identity"]

    names = [f"before-{n}" for n in range(5)]
    for name in names:
        aex.create(control_plane, namespace, name, name, parameters={"delaySeconds": 1})
    await eventually(
        lambda: aex.list_all(control_plane, namespace),
        lambda items: len(items) == 5 and all(aex.phase(o) == "Succeeded" for o in items),
        timeout=60,
        what="first batch",
    )
    # The standby watched every event (its cache is warm) and wrote nothing.
    assert reconciles(leader) >= 5
    assert reconciles(standby) == 0
    assert standby.statusz()["executions"]["known"] == 5

    leader.kill()
    killed = time.monotonic()
    later = [f"after-{n}" for n in range(5)]
    for name in later:
        aex.create(control_plane, namespace, name, name)
    await eventually(
        lambda: standby.statusz()["leader"]["leading"], timeout=30, what="the standby leads"
    )
    took_over = time.monotonic() - killed
    await aex.all_succeed_once(
        control_plane, namespace, names + later, temporal.address, ops[0].task_queue, timeout=120
    )
    # A graceful stop releases the Lease: a successor leads at once, not after expiry.
    successor = make_operator(POD_NAME="replica-2", **lease)
    standby.stop()
    stopped = time.monotonic()
    await eventually(
        lambda: successor.statusz()["leader"]["leading"], timeout=30, what="the successor leads"
    )
    handed_over = time.monotonic() - stopped
    assert handed_over < 5, handed_over
    SUMMARY.append(
        f"[lease] takeover {took_over:.1f} s after the leader was SIGKILLed (lease 6 s); "
        f"hand-over {handed_over:.1f} s after a graceful stop"
    )
