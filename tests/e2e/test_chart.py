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


async def test_two_replicas_one_reconciles_and_the_other_takes_over(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    crd: None,
    make_operator: Callable[..., OperatorProcess],
) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "kopf-peering.yaml"))
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin=yaml.safe_dump({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                              "metadata": {"name": "aex"}}),
    )  # fmt: skip
    ops = [make_operator(AGENTEXEC_PEERING="aex") for _ in range(2)]

    def last_peering(op: OperatorProcess) -> str:
        lines = [ln for ln in op.log().splitlines() if "kopf._core.engines.peering" in ln]
        return lines[-1] if lines else ""

    # Settled: both peers registered, one resumed, the other paused. (kopf
    # starts every peer paused; one that ran alone first pauses when a higher
    # priority peer appears, handing over without duplicates.)
    await eventually(
        lambda: control_plane.kubectl_json("get", "-n", namespace, "kopfpeering", "aex"),
        lambda peering: len(peering.get("status") or {}) == 2,
        timeout=60,
        what="both replicas registered as peers",
    )
    active = (
        await eventually(
            lambda: [op for op in ops if "Resuming operations" in last_peering(op)],
            lambda found: len(found) == 1,
            timeout=60,
            what="exactly one replica active",
        )
    )[0]
    standby = next(op for op in ops if op is not active)
    standby_log_before = len(standby.log())

    names = [f"before-{n}" for n in range(5)]
    for name in names:
        aex.create(control_plane, namespace, name, name, parameters={"delaySeconds": 1})
    await eventually(
        lambda: aex.list_all(control_plane, namespace),
        lambda items: all(aex.phase(o) == "Succeeded" for o in items),
        timeout=60,
        what="first batch",
    )
    assert "reconciled: started" in active.log()
    assert "reconciled: started" not in standby.log()[standby_log_before:]

    active.kill()
    later = [f"after-{n}" for n in range(5)]
    for name in later:
        aex.create(control_plane, namespace, name, name)
    # The standby takes over once the killed leader's peering record expires
    # (lifetime 15 s), then does the work; the bound is generous for a loaded CI.
    taken_over = time.monotonic()
    await aex.all_succeed_once(
        control_plane, namespace, names + later, temporal.address, ops[0].task_queue, timeout=120
    )
    SUMMARY.append(
        f"[peering] standby finished the 5 new executions "
        f"{time.monotonic() - taken_over:.1f} s after the leader was killed"
    )
