"""The Helm chart against the real control plane: renders valid objects,
installs, refuses bad values, and grants exactly what the operator needs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentexec.runner.providers import PROVIDERS_FILE_ENV, load_providers
from agentexec.settings import load_settings
from localenv.binaries import ROOT, built_tool, venv_tool, versions
from localenv.helm import CHART, EVERYTHING_ON, Helm
from localenv.kube import ControlPlane
from localenv.pki import CertificateAuthority
from localenv.procs import ManagedProcess
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.support.operator import OperatorProcess, RunnerProcess
from tests.support.report import SUMMARY
from tests.support.waiting import eventually

FIXTURES = Path(__file__).parent / "fixtures"
# The cluster's CRDs are applied from crds/ by the `crd` fixture (as where
# CRDs are managed centrally), so releases here do not install them.
NO_CRDS = ("--set", "crds.install=false")


@pytest.fixture
def helm(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Helm]:
    helm = Helm(control_plane, tmp_path / "helm")
    yield helm
    # A release owns cluster-wide objects (its admission policy and binding,
    # cluster roles) that act on every later test's namespace: none outlives
    # its test. (A leftover admission policy refused every later create for
    # a while after a test restarted the API server: kubernetes#124237.)
    helm.plane = control_plane
    for release in json.loads(helm.run("list", "-A", "-o", "json").stdout or "[]"):
        helm.run("uninstall", release["name"], "-n", release["namespace"], "--wait")


def objects(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def is_runner(obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return bool(labels.get("app.kubernetes.io/component") == "runner")


def the(rendered: str, kind: str, runner: bool = False) -> dict[str, Any]:
    """The one object of ``kind``: the operator's, or with ``runner`` the runner's."""
    found = [o for o in objects(rendered) if o["kind"] == kind and is_runner(o) == runner]
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]


def pod_spec(rendered: str) -> dict[str, Any]:
    spec: dict[str, Any] = the(rendered, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_chart_crd_is_the_crds_file() -> None:
    """crds/ is the source, and holds only our three CRDs (leadership is a Lease,
    no kopf peering CRDs); the chart carries them as they are under
    files/crds/ (a template, governed by crds.install) and has no crds/
    folder, which Helm would install unconditionally and never upgrade."""
    names = [
        "agentapprovals.agentexec.io.yaml",
        "agentexecutions.agentexec.io.yaml",
        "agents.agentexec.io.yaml",
        "executionpolicies.agentexec.io.yaml",
    ]
    assert sorted(p.name for p in (ROOT / "crds").iterdir()) == names
    assert sorted(p.name for p in (CHART / "files" / "crds").iterdir()) == names
    for name in names:
        carried = (CHART / "files" / "crds" / name).read_bytes()
        assert carried == (ROOT / "crds" / name).read_bytes(), name
    assert not (CHART / "crds").exists()


def test_helm_template_needs_no_kube_version(helm: Helm) -> None:
    """The project's helm carries its release stamp: `helm template` passes the
    chart's kubeVersion check with no --kube-version (an unstamped build
    believes it is talking to Kubernetes v1.20)."""
    version = helm.run("version", "--template", "{{.Version}}").stdout.strip()
    assert version == versions()["HELM_VERSION"]
    # The one way the project finds helm (localenv.helm: tests, the node
    # tier, make e2e-kind) names this stamped build.
    assert helm.binary == built_tool("helm")
    rendered = helm.template_result()
    assert rendered.returncode == 0, rendered.stderr
    assert the(rendered.stdout, "Deployment")


@pytest.mark.parametrize("install", [True, False])
def test_crds_install_decides_whether_the_release_carries_the_crd(
    helm: Helm, install: bool
) -> None:
    rendered = helm.template("--include-crds", "--set", f"crds.install={str(install).lower()}")
    crds = {
        o["metadata"]["name"]: o
        for o in objects(rendered)
        if o["kind"] == "CustomResourceDefinition"
    }
    if not install:
        assert crds == {}
        return
    assert set(crds) == {
        "agentapprovals.agentexec.io",
        "agentexecutions.agentexec.io",
        "agents.agentexec.io",
        "executionpolicies.agentexec.io",
    }
    for name, ours in crds.items():
        source = yaml.safe_load((ROOT / "crds" / f"{name}.yaml").read_text())
        assert ours["spec"] == source["spec"], name
        assert ours["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Without --include-crds too: it is a template, so `helm upgrade` applies it.
    plain = {
        o["metadata"]["name"]: o["spec"]
        for o in objects(helm.template())
        if o["kind"] == "CustomResourceDefinition"
    }
    assert plain == {name: crd["spec"] for name, crd in crds.items()}
    for o in objects(helm.template("--set", "crds.keep=false")):
        if o["kind"] == "CustomResourceDefinition":
            assert "helm.sh/resource-policy" not in (o["metadata"].get("annotations") or {})


def test_first_install_with_replicas_on_a_cluster_without_crds(helm: Helm, tmp_path: Path) -> None:
    """A fresh cluster: the AgentExecution, Agent and ExecutionPolicy CRDs come with the
    release, and are the only CRDs it brings (leadership needs the built-in
    Lease, not kopf's peering CRDs); the Lease's Role is in the release namespace."""
    fresh = ControlPlane(tmp_path / "fresh")
    fresh.start()
    try:
        helm.plane = fresh
        fresh.kubectl("create", "namespace", "aex")
        helm.run("install", "aex", str(CHART), "-n", "aex", "--set", "replicaCount=2")
        crds = fresh.kubectl("get", "crd", "-o", "name").stdout.split()
        assert crds == [
            "customresourcedefinition.apiextensions.k8s.io/agentapprovals.agentexec.io",
            "customresourcedefinition.apiextensions.k8s.io/agentexecutions.agentexec.io",
            "customresourcedefinition.apiextensions.k8s.io/agents.agentexec.io",
            "customresourcedefinition.apiextensions.k8s.io/executionpolicies.agentexec.io",
        ]
        crd = fresh.kubectl_json("get", "crd", "agentexecutions.agentexec.io")
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "aex"  # type: ignore[index]
        role: dict[str, Any] = fresh.kubectl_json(
            "get", "role", "-n", "aex", "aex-agentexec-operator-leader-election"
        )
        assert {g for rule in role["rules"] for g in rule["apiGroups"]} == {"coordination.k8s.io"}
    finally:
        fresh.stop()


def test_a_release_adopts_the_crds_and_keeps_them_on_uninstall(
    control_plane: ControlPlane, helm: Helm, namespace: str, crd: None
) -> None:
    # The session's CRDs were applied with kubectl; --take-ownership adopts them.
    helm.run("install", "crds", str(CHART), "-n", namespace, "--take-ownership",
             "--set", f"watchNamespaces={{{namespace}}}")  # fmt: skip
    owned = control_plane.kubectl_json("get", "crd", "agentexecutions.agentexec.io")
    annotations = owned["metadata"]["annotations"]  # type: ignore[index]
    assert annotations["meta.helm.sh/release-name"] == "crds"
    assert annotations["helm.sh/resource-policy"] == "keep"
    aex.create(control_plane, namespace, "survivor", "still here")
    helm.run("uninstall", "crds", "-n", namespace, "--wait")
    assert aex.get(control_plane, namespace, "survivor")["spec"]["message"] == "still here"


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
    assert {"Deployment", "ServiceAccount", "Service", "CustomResourceDefinition"} <= kinds
    out = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered, check=False)
    assert out.returncode == 0, out.stderr


def test_install_creates_the_objects_and_schema_refuses_bad_values(
    control_plane: ControlPlane, helm: Helm, namespace: str, crd: None
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

    installed = helm.run(
        "install", "aex", str(CHART), "-n", namespace,
        "--set", f"watchNamespaces={{{namespace}}}", *NO_CRDS,
    )  # fmt: skip
    assert "Upgrading" not in installed.stdout
    notes = " ".join(installed.stdout.split())
    assert "Agents run in the runner Deployment" in notes
    assert "inside the operator pods" not in notes
    # An upgrade to the same version has no upgrade notes (tests/e2e/
    # test_release.py crosses versions); with the operator's own runner on
    # too, the notes say agents run in both places.
    upgrade = helm.run(
        "upgrade", "aex", str(CHART), "-n", namespace, "--reuse-values", "--dry-run=client",
        "--set", "temporal.runnerEnabled=true",
    )  # fmt: skip
    notes = " ".join(upgrade.stdout.split())
    assert "Upgrading" not in notes
    assert "inside the operator pods too (temporal.runnerEnabled=true)" in notes
    names = control_plane.kubectl(
        "get", "-n", namespace, "deploy,sa,svc,role,rolebinding", "-o", "name"
    ).stdout.split()
    assert "deployment.apps/aex-agentexec-operator" in names
    assert "serviceaccount/aex-agentexec-operator" in names
    assert "service/aex-agentexec-operator-metrics" in names
    assert "role.rbac.authorization.k8s.io/aex-agentexec-operator" in names
    assert "role.rbac.authorization.k8s.io/aex-agentexec-operator-leader-election" in names
    assert "rolebinding.rbac.authorization.k8s.io/aex-agentexec-operator-leader-election" in names
    deploy = control_plane.kubectl_json("get", "-n", namespace, "deploy", "aex-agentexec-operator")
    pod = deploy["spec"]["template"]["spec"]  # type: ignore[index]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["terminationGracePeriodSeconds"] > 30  # longer than the worker grace
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


async def test_runner_deployment_runs_agents_with_no_api_rights(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    helm: Helm,
    namespace: str,
    crd: None,
    tmp_path: Path,
) -> None:
    """The runner Deployment (issue #13): accepted by the API server, the
    operator's restricted pod shape, Temporal settings shared with the
    operator, a ServiceAccount with no token and no rights; and the container's
    command with the Deployment's environment serves agents."""
    helm.run(
        "install", "run", str(CHART), "-n", namespace,
        "--set", f"watchNamespaces={{{namespace}}}", *NO_CRDS,
    )  # fmt: skip
    name = "run-agentexec-operator-runner"
    deploy: dict[str, Any] = control_plane.kubectl_json("get", "-n", namespace, "deploy", name)
    operator: dict[str, Any] = control_plane.kubectl_json(
        "get", "-n", namespace, "deploy", "run-agentexec-operator"
    )
    assert deploy["spec"]["replicas"] == 2
    # No operator selector picks the runner's pods, nor the other way round.
    runner_labels = deploy["spec"]["template"]["metadata"]["labels"]
    operator_selector = operator["spec"]["selector"]["matchLabels"]
    assert not operator_selector.items() <= runner_labels.items()
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["runner"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "http",
        "scheme": "HTTP",
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Rollouts (#19): a new runner first, old ones drain on their own build.
    assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop == ["agentexec-operator", "runner", "--drain"]
    env = env_of(deploy)
    op_env = env_of(operator)
    grace = int(env["TEMPORAL_WORKER_GRACE_SECONDS"]["value"])
    assert pod["terminationGracePeriodSeconds"] > grace >= 60, (pod, grace)
    assert op_env["AGENTEXEC_MAX_DISRUPTIONS"]["value"] == "10"
    for shared in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"):
        assert env[shared] == op_env[shared]
    assert (
        env["AGENTEXEC_RUNNER_TASK_QUEUES"]["value"]
        == op_env["AGENTEXEC_RUNNER_TASK_QUEUE"]["value"]
    )
    # The operator runs no agents itself by default.
    assert op_env["AGENTEXEC_RUNNER_ENABLED"]["value"] == "false"

    sa_name = pod["serviceAccountName"]
    sa: dict[str, Any] = control_plane.kubectl_json("get", "-n", namespace, "sa", sa_name)
    assert sa["automountServiceAccountToken"] is False
    subject = f"system:serviceaccount:{namespace}:{sa_name}"
    bindings = control_plane.kubectl_json("get", "rolebindings,clusterrolebindings", "-A")
    bound = [
        b["metadata"]["name"]
        for b in bindings["items"]  # type: ignore[index]
        if any(s.get("name") == sa_name and s.get("kind") == "ServiceAccount"
               for s in b.get("subjects") or [])
    ]  # fmt: skip
    assert bound == []
    for verb, resource in (
        ("get", "agentexecutions.agentexec.io"), ("list", "agentexecutions.agentexec.io"),
        ("get", "secrets"), ("list", "pods"), ("create", "leases.coordination.k8s.io"),
        ("create", "events"), ("get", "configmaps"),
    ):  # fmt: skip
        can = control_plane.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, f"--as={subject}", check=False
        )
        assert can.stdout.strip() == "no", (verb, resource)

    # The container's command with the Deployment's environment (Temporal
    # pointed at the test's server; no kubeconfig at all) serves echo.
    queue = f"chart-runner-{namespace}"
    resolved = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    resolved.pop("AGENTEXEC_HTTP_PORT")  # the pod's port; RunnerProcess picks a free one
    resolved.update(TEMPORAL_ADDRESS=temporal.address, AGENTEXEC_RUNNER_TASK_QUEUES=queue)
    runner = RunnerProcess(tmp_path, temporal.address, queue, env=resolved)
    runner.start()
    operator_process = OperatorProcess(
        tmp_path / "op", control_plane.kubeconfig, temporal.address, namespace,
        {"AGENTEXEC_RUNNER_ENABLED": op_env["AGENTEXEC_RUNNER_ENABLED"]["value"],
         "AGENTEXEC_RUNNER_TASK_QUEUE": queue},
    )  # fmt: skip
    try:
        operator_process.start()
        aex.create(control_plane, namespace, "via-runner", "hello")
        done = await eventually(
            lambda: aex.get(control_plane, namespace, "via-runner"),
            lambda o: aex.phase(o) == "Succeeded",
            timeout=60,
            what="Succeeded through the runner",
        )
        assert done["status"]["output"] == "hello"
        assert runner.statusz()["runner"]["agents"] == ["chat", "echo"]  # the image's entry points
        assert "KUBECONFIG" not in runner.environ
        # What the kubelet runs in the pod before SIGTERM: the runner drains and ends.
        hook = runner.run_in_pod(prestop)
        assert (hook.returncode, hook.stdout.strip()) == (0, '{"drained": true}'), hook
        await eventually(lambda: runner.returncode, lambda rc: rc == 0, what="runner exited 0")
    finally:
        operator_process.stop()
        runner.stop()


PROVIDER_KEY = "sk-chart-provider-2b7e9c41d5"


def test_runner_providers_come_from_a_config_map_and_keys_from_mounted_secrets(
    control_plane: ControlPlane, helm: Helm, namespace: str, crd: None, tmp_path: Path
) -> None:
    """runner.providers: the providers file in a ConfigMap without any key,
    each provider's Secret mounted whole (no subPath, so a rotated key
    arrives) where the file's apiKeyFile says, and the runner still without
    any API rights."""
    control_plane.kubectl(
        "create", "secret", "generic", "openai-key", "-n", namespace,
        f"--from-literal=token={PROVIDER_KEY}",
    )  # fmt: skip
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {"watchNamespaces": [namespace], "crds": {"install": False},
             "runner": {"providers": {
                 "openai": {"baseURL": "https://api.openai.com/v1", "timeoutSeconds": 45,
                            "headers": {"OpenAI-Organization": "org-123"},
                            "apiKeySecret": {"name": "openai-key", "key": "token"}},
                 "ollama": {"baseURL": "http://ollama.ai.svc:11434/v1"},
             }}}
        )
    )  # fmt: skip
    helm.run("install", "prov", str(CHART), "-n", namespace, "-f", str(values))
    deploy: dict[str, Any] = control_plane.kubectl_json(
        "get", "-n", namespace, "deploy", "prov-agentexec-operator-runner"
    )
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["provider-openai"]["secret"]["secretName"] == "openai-key"
    assert volumes["provider-openai"]["secret"]["items"] == [{"key": "token", "path": "apiKey"}]
    assert mounts["provider-openai"]["mountPath"] == "/var/run/agentexec/providers/openai"
    assert "provider-ollama" not in volumes  # no key, no volume
    assert all(m.get("readOnly") for n, m in mounts.items() if n != "tmp")
    assert not [m for m in container["volumeMounts"] if "subPath" in m]
    providers_path = env_of(deploy)["AGENTEXEC_PROVIDERS_FILE"]["value"]
    assert providers_path.startswith(mounts["providers"]["mountPath"] + "/")

    config_map_name = volumes["providers"]["configMap"]["name"]
    config_map = control_plane.kubectl_json("get", "-n", namespace, "cm", config_map_name)
    assert PROVIDER_KEY not in json.dumps(config_map)
    assert "openai-key" not in json.dumps(config_map)  # not even where the key lives

    # As the kubelet would project both volumes: the file parses, and each
    # apiKeyFile is where the Secret's key landed.
    root = tmp_path / "pod"
    env = mount_as_kubelet(control_plane, namespace, pod, root)
    providers = load_providers(Path(env["AGENTEXEC_PROVIDERS_FILE"]))
    assert set(providers) == {"openai", "ollama"}
    openai = providers["openai"]
    assert (openai.base_url, openai.timeout_seconds) == ("https://api.openai.com/v1", 45)
    assert openai.headers == {"OpenAI-Organization": "org-123"}
    assert str(openai.api_key_file) == "/var/run/agentexec/providers/openai/apiKey"
    assert openai.api_key_file is not None
    projected = replace(openai, api_key_file=root / openai.api_key_file.relative_to("/"))
    assert projected.read_api_key() == PROVIDER_KEY
    assert providers["ollama"].api_key_file is None

    sa = pod["serviceAccountName"]
    for verb, resource in (("get", "secrets"), ("get", "configmaps"), ("list", "secrets")):
        can = control_plane.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace,
            f"--as=system:serviceaccount:{namespace}:{sa}", check=False,
        )  # fmt: skip
        assert can.stdout.strip() == "no", (verb, resource)


def service_account_kubeconfig(plane: ControlPlane, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that is the chart's ServiceAccount: a token the API server
    issued for it (kopf's login cannot impersonate, so a token it is)."""
    token = plane.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(plane.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


def leader_env(deployment: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The Deployment's leader-election variables as the kubelet resolves them
    for a pod named `pod_name` (the downward API's metadata fields)."""
    pod = {"metadata.name": pod_name, "metadata.namespace": deployment["metadata"]["namespace"]}
    resolved = {}
    for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if e["name"].startswith(("AGENTEXEC_LEADER_ELECTION", "POD_")):
            field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            resolved[e["name"]] = pod[field] if field else e["value"]
    return resolved


async def test_operator_runs_with_only_the_charts_rbac(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    helm: Helm,
    namespace: str,
    crd: None,
    tmp_path: Path,
) -> None:
    helm.run(
        "install", "rbac", str(CHART), "-n", namespace,
        "--set", f"watchNamespaces={{{namespace}}}", *NO_CRDS,
    )  # fmt: skip
    lease = "rbac-agentexec-operator"
    sa = f"system:serviceaccount:{namespace}:rbac-agentexec-operator"
    kubeconfig = service_account_kubeconfig(
        control_plane, namespace, "rbac-agentexec-operator", tmp_path / "sa-kubeconfig"
    )
    whoami = control_plane.kubectl(f"--kubeconfig={kubeconfig}", "auth", "whoami", "-o", "json")
    assert sa in whoami.stdout

    # A verb the chart does not grant is refused for that identity.
    denied = control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", f"--as={sa}",
        stdin=aex.manifest("anything"), check=False,
    )  # fmt: skip
    assert "Forbidden" in denied.stderr
    assert 'cannot create resource "agentexecutions"' in denied.stderr
    can = control_plane.kubectl(
        "auth", "can-i", "patch", "agentexecutions.agentexec.io", "--subresource=status",
        "-n", namespace, f"--as={sa}", check=False,
    )  # fmt: skip
    assert can.stdout.strip() == "yes"

    def allowed(*args: str) -> bool:
        out = control_plane.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
        return out.stdout.strip() == "yes"

    # Only what the operator calls: status is written, never read; the Lease
    # is read, created and updated in the release namespace, and no other.
    assert not allowed("get", "agentexecutions.agentexec.io", "--subresource=status",
                       "-n", namespace)  # fmt: skip
    assert allowed("create", "leases.coordination.k8s.io", "-n", namespace)
    for verb in ("get", "update"):
        assert allowed(verb, f"leases.coordination.k8s.io/{lease}", "-n", namespace)
        assert not allowed(verb, "leases.coordination.k8s.io/another", "-n", namespace)
    for verb in ("list", "watch", "patch", "delete"):
        assert not allowed(verb, f"leases.coordination.k8s.io/{lease}", "-n", namespace)
    assert not allowed("create", "leases.coordination.k8s.io", "-n", "default")
    # Deleting executions: those whose ttlSecondsAfterFinished ran out.
    assert allowed("delete", "agentexecutions.agentexec.io", "-n", namespace)
    # Agents are only read (the snapshot is taken, never written back).
    for verb in ("get", "list", "watch"):
        assert allowed(verb, "agents.agentexec.io", "-n", namespace)
    for verb in ("create", "update", "patch", "delete"):
        assert not allowed(verb, "agents.agentexec.io", "-n", namespace)
    # ExecutionPolicies are read; only their status (the budget's spending)
    # is written.
    for verb in ("get", "list", "watch"):
        assert allowed(verb, "executionpolicies.agentexec.io", "-n", namespace)
    for verb in ("create", "update", "patch", "delete"):
        assert not allowed(verb, "executionpolicies.agentexec.io", "-n", namespace)
    assert allowed("patch", "executionpolicies.agentexec.io", "--subresource=status",
                   "-n", namespace)  # fmt: skip

    # The reference reconnection scenario, as that identity, with the pod's
    # leader-election variables from the installed Deployment: the Lease is
    # the release's, in the namespace POD_NAMESPACE names.
    deployment: dict[str, Any] = control_plane.kubectl_json("get", "-n", namespace, "deploy", lease)
    pod_name = f"{lease}-5d4c8b9f7-x2x7q"
    env = leader_env(deployment, pod_name)
    assert env == {
        "AGENTEXEC_LEADER_ELECTION": "true", "AGENTEXEC_LEADER_ELECTION_NAME": lease,
        "AGENTEXEC_LEADER_ELECTION_LEASE_SECONDS": "10",
        "POD_NAME": pod_name, "POD_NAMESPACE": namespace,
    }  # fmt: skip
    # Unset the test harness's own Lease namespace: POD_NAMESPACE decides.
    env["AGENTEXEC_LEADER_ELECTION_NAMESPACE"] = ""
    temporal.kill()
    operator = OperatorProcess(tmp_path / "op", kubeconfig, temporal.address, namespace, env)
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
        leader = operator.statusz()["leader"]
        assert leader["leading"]
        assert leader["identity"] == pod_name
        held: dict[str, Any] = control_plane.kubectl_json("get", "-n", namespace, "lease", lease)
        assert held["spec"]["holderIdentity"] == pod_name
        assert "Forbidden" not in operator.log()
        assert "lease request failed" not in operator.log()
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


def mount_as_kubelet(
    plane: ControlPlane, namespace: str, pod: dict[str, Any], root: Path
) -> dict[str, str]:
    """What the pod's first container would see: its Secret and ConfigMap
    volumes projected under `root` as the kubelet projects them (only `items`
    when given; a listed key the Secret lacks fails the mount), and its env
    with the mount paths moved under `root`."""
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for volume in pod["volumes"]:
        if "secret" in volume:
            secret = plane.kubectl_json(
                "get", "secret", "-n", namespace, volume["secret"]["secretName"]
            )
            encoded: dict[str, str] = secret.get("data") or {}  # type: ignore[assignment]
            data = {k: base64.b64decode(v) for k, v in encoded.items()}
            items = volume["secret"].get("items")
        elif "configMap" in volume:
            config_map = plane.kubectl_json(
                "get", "configmap", "-n", namespace, volume["configMap"]["name"]
            )
            plain: dict[str, str] = config_map.get("data") or {}  # type: ignore[assignment]
            data = {k: v.encode() for k, v in plain.items()}
            items = volume["configMap"].get("items")
        else:
            continue
        target = root / mounts[volume["name"]].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        for item in items or [{"key": k, "path": k} for k in data]:
            assert item["key"] in data, f"mount fails: no key {item['key']!r} in {volume}"
            (target / item["path"]).write_bytes(data[item["key"]])
    return {
        e["name"]: re.sub(r"^/(etc|var/run)/agentexec/", f"{root}/\\1/agentexec/", e["value"])
        for e in container["env"]
        if "value" in e
    }


TLS_SETUPS = {
    # mTLS to a server whose certificate is publicly trusted: a
    # kubernetes.io/tls Secret, no ca.crt; the system roots verify the server.
    "public-ca-mtls": ({"tls.crt", "tls.key"}, {"keys": {"ca": ""}}),
    # A private CA and no client certificate (an API key, or none).
    "private-ca-no-client-cert": ({"ca.crt"}, {"keys": {"cert": "", "key": ""}}),
    # The full set, as cert-manager writes it.
    "private-ca-mtls": ({"ca.crt", "tls.crt", "tls.key"}, {}),
}


@pytest.mark.parametrize("setup", TLS_SETUPS)
def test_tls_secret_mounts_only_the_keys_it_has_and_the_operator_starts(
    control_plane: ControlPlane, helm: Helm, namespace: str, tmp_path: Path, setup: str
) -> None:
    keys, tls_values = TLS_SETUPS[setup]
    ca = CertificateAuthority(tmp_path / "pki")
    client = ca.issue("client", "agentexec-operator")
    files = {"ca.crt": ca.cert_path, "tls.crt": client.cert, "tls.key": client.key}
    control_plane.kubectl(
        "create", "secret", "generic", "temporal-tls", "-n", namespace,
        *(f"--from-file={k}={files[k]}" for k in sorted(keys)),
    )  # fmt: skip
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({"temporal": {"tls": {"enabled": True, "secretName": "temporal-tls",
                                             **tls_values}}})
    )  # fmt: skip
    rendered = helm.template("--namespace", namespace, "-f", str(values))
    deployment = yaml.safe_dump(the(rendered, "Deployment"))
    valid = control_plane.kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin=deployment, check=False
    )
    assert valid.returncode == 0, valid.stderr

    env = mount_as_kubelet(control_plane, namespace, pod_spec(rendered), tmp_path / "pod")
    told = {name for name in env if name.startswith("TEMPORAL_TLS_") and name.endswith("_FILE")}
    expected = {"TEMPORAL_TLS_CA_FILE"} if "ca.crt" in keys else set()
    if "tls.crt" in keys:
        expected |= {"TEMPORAL_TLS_CERT_FILE", "TEMPORAL_TLS_KEY_FILE"}
    assert told == expected
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "agentexec-operator"), "--check-config"],
        # In the pod the service account's token; here the control plane's.
        env={"PATH": os.environ["PATH"], "KUBECONFIG": str(control_plane.kubeconfig), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.stdout.splitlines()[-1] == "configuration ok", checked.stderr


def test_tls_keys_refuse_half_a_client_pair(helm: Helm) -> None:
    half = helm.template_result(
        "--set", "temporal.tls.secretName=t", "--set", "temporal.tls.keys.key="
    )  # fmt: skip
    assert half.returncode != 0
    assert "temporal.tls.keys.cert and temporal.tls.keys.key: name both" in half.stderr


@pytest.fixture
def role_aggregation(control_plane: ControlPlane, tmp_path: Path) -> Iterator[None]:
    """kube-controller-manager running only the ClusterRole aggregation
    controller, which fills the built-in view/edit/admin roles."""
    kcm = ManagedProcess(
        "kube-controller-manager",
        [
            str(built_tool("kube-controller-manager")),
            f"--kubeconfig={control_plane.kubeconfig}",
            "--controllers=clusterrole-aggregation",
            "--leader-elect=false",
            "--secure-port=0",
        ],
        tmp_path / "kube-controller-manager.log",
    )
    kcm.start()
    try:
        yield
    finally:
        kcm.stop()


async def test_tenants_with_the_builtin_roles_can_use_agentexecutions(
    control_plane: ControlPlane, helm: Helm, namespace: str, crd: None, role_aggregation: None
) -> None:
    helm.run("install", "tenants", str(CHART), "-n", namespace, *NO_CRDS,
             "--set", f"watchNamespaces={{{namespace}}}")  # fmt: skip
    for role, user in (
        ("view", "alice"),
        ("edit", "bob"),
        ("admin", "carol"),
        ("tenants-agentexec-operator-agent-author", "dave"),
    ):
        control_plane.kubectl(
            "create", "rolebinding", f"{user}-{role}", "-n", namespace,
            f"--clusterrole={role}", f"--user={user}",
        )  # fmt: skip

    def can(user: str, verb: str, subresource: str = "", kind: str = "agentexecutions") -> bool:
        out = control_plane.kubectl(
            "auth", "can-i", verb, f"{kind}.agentexec.io", f"--subresource={subresource}",
            "-n", namespace, f"--as={user}", check=False,
        )  # fmt: skip
        return out.stdout.strip() == "yes"

    expected = {
        ("alice", "list"): True, ("alice", "watch"): True, ("alice", "create"): False,
        ("alice", "delete"): False,
        ("bob", "create"): True, ("bob", "delete"): True, ("bob", "patch"): True,
        ("carol", "create"): True, ("carol", "deletecollection"): True,
        # Agents: view reads them; writing them is the agent-author role's,
        # not edit's nor admin's (an Agent chooses queues and providers).
        ("alice", "get", "", "agents"): True, ("alice", "create", "", "agents"): False,
        ("bob", "get", "", "agents"): True, ("bob", "create", "", "agents"): False,
        ("carol", "delete", "", "agents"): False,
        ("dave", "create", "", "agents"): True, ("dave", "update", "", "agents"): True,
        ("dave", "create"): False,
        # ExecutionPolicies: a team reads its limits and cannot change them.
        ("alice", "get", "", "executionpolicies"): True,
        ("bob", "create", "", "executionpolicies"): False,
        ("carol", "update", "", "executionpolicies"): False,
        ("carol", "patch", "status", "executionpolicies"): False,
    }  # fmt: skip
    await eventually(
        lambda: {key: can(*key) for key in expected},
        lambda seen: seen == expected,
        timeout=30,
        what="the built-in roles grant AgentExecutions as aggregated",
    )
    # Status is the operator's: no tenant role writes it.
    for user in ("alice", "bob", "carol"):
        assert not can(user, "patch", "status")
    assert can("alice", "get", "status")


def network_policy(helm: Helm, *args: str) -> dict[str, Any]:
    rendered = helm.template("--set", "networkPolicy.enabled=true", *args)
    spec: dict[str, Any] = the(rendered, "NetworkPolicy")["spec"]
    return spec


API_SERVER = ("--set", "networkPolicy.apiServer.to[0].ipBlock.cidr=10.96.0.1/32")


def test_network_policy_names_destinations_and_closes_ingress_by_default(
    control_plane: ControlPlane, helm: Helm, namespace: str
) -> None:
    refused = helm.template_result("--set", "networkPolicy.enabled=true")
    assert refused.returncode != 0
    assert "networkPolicy.apiServer.to" in refused.stderr

    spec = network_policy(helm, *API_SERVER)
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []  # no metricsFrom: nobody may connect
    by_port = {p["port"]: rule for rule in spec["egress"] for p in rule["ports"]}
    assert set(by_port) == {53, 443, 6443, 7233}
    for rule in spec["egress"]:
        assert rule["to"], f"egress rule without destination: {rule}"
    assert by_port[443]["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]
    # Temporal: the namespace of the default address temporal-frontend.temporal:7233.
    assert by_port[7233]["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "temporal"}}}
    ]
    assert by_port[53]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}

    only_6443 = network_policy(helm, *API_SERVER, "--set", "networkPolicy.apiServer.ports={6443}")
    assert {p["port"] for rule in only_6443["egress"] for p in rule["ports"]} == {53, 6443, 7233}

    outside = helm.template_result(
        "--set", "networkPolicy.enabled=true", *API_SERVER,
        "--set", "temporal.address=my-ns.tmprl.cloud:7233",
    )  # fmt: skip
    assert outside.returncode != 0
    assert "networkPolicy.temporal.to" in outside.stderr

    everything = the(helm.template("-f", str(EVERYTHING_ON)), "NetworkPolicy")
    assert all(rule["from"] for rule in everything["spec"]["ingress"])
    assert all(rule["to"] for rule in everything["spec"]["egress"])
    for policy in (spec, everything["spec"]):
        doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "np", "namespace": namespace}, "spec": policy}  # fmt: skip
        valid = control_plane.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(doc), check=False
        )
        assert valid.returncode == 0, valid.stderr


@pytest.mark.parametrize(
    ("case", "args", "expected"),
    [
        ("no runner replicas", ("--set", "runner.replicaCount=0"), "replicaCount"),
        (
            "a credential in provider headers",
            ("--set", "runner.providers.p.baseURL=https://x",
             "--set", "runner.providers.p.headers.X-Api-KEY=k"),
            "invalid propertyName 'X-Api-KEY'",
        ),
        (
            "an authorization header",
            ("--set", "runner.providers.p.baseURL=https://x",
             "--set", "runner.providers.p.headers.Authorization=Bearer k"),
            "invalid propertyName 'Authorization'",
        ),
        (
            "payload keys without the key that encrypts",
            ("--set", "payloadEncryption.secretName=payload-keys"),
            "payloadEncryption.currentKeyId: name the key ID that encrypts",
        ),
        (
            "a current key without its Secret",
            ("--set", "payloadEncryption.currentKeyId=k1"),
            "payloadEncryption.secretName: name the Secret",
        ),
        (
            "half a client pair for the runner",
            ("--set", "runner.temporal.tls.secretName=t", "--set", "runner.temporal.tls.keys.key="),
            "runner.temporal.tls.keys.cert and runner.temporal.tls.keys.key",
        ),
        (
            "providers behind a policy without egress to them",
            ("--set", "networkPolicy.enabled=true", *API_SERVER,
             "--set", "runner.providers.p.baseURL=https://x"),
            "networkPolicy.runner.extraEgress",
        ),
    ],
)  # fmt: skip
def test_chart_guards_refuse(helm: Helm, case: str, args: tuple[str, ...], expected: str) -> None:
    refused = helm.template_result(*args)
    assert refused.returncode != 0, case
    assert expected in refused.stderr, refused.stderr


def test_chart_guards_accept_what_they_should(helm: Helm) -> None:
    provider = ("--set", "runner.providers.p.baseURL=https://x")
    helm.template(*provider, "--set", "runner.providers.p.headers.OpenAI-Organization=org-1")
    egress = ("--set", "networkPolicy.runner.extraEgress[0].to[0].ipBlock.cidr=0.0.0.0/0")
    helm.template("--set", "networkPolicy.enabled=true", *API_SERVER, *provider, *egress)
    # Without the runner Deployment its providers are not used: nothing to allow.
    helm.template(
        "--set", "networkPolicy.enabled=true", *API_SERVER, *provider,
        "--set", "runner.enabled=false",
    )  # fmt: skip


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_deployment_never_runs_two_reconcilers_and_takes_placement_values(helm: Helm) -> None:
    """The Lease keeps one reconciler through a rolling update, with any
    replica count; without leader election only Recreate and one replica."""
    default = the(helm.template(), "Deployment")
    assert default["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
    }  # fmt: skip
    env = env_of(default)
    assert env["AGENTEXEC_LEADER_ELECTION"]["value"] == "true"
    assert env["AGENTEXEC_LEADER_ELECTION_NAME"]["value"] == "rel-agentexec-operator"
    assert env["AGENTEXEC_LEADER_ELECTION_LEASE_SECONDS"]["value"] == "10"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Recreate takes no rollingUpdate (the API server would refuse one).
    recreate = the(helm.template("--set", "strategy.type=Recreate"), "Deployment")
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}

    standalone = ("--set", "leaderElection.enabled=false")
    rolling = helm.template_result(*standalone)
    assert rolling.returncode != 0
    assert "leaderElection.enabled=false needs strategy.type Recreate" in rolling.stderr
    several = helm.template_result(*standalone, "--set", "strategy.type=Recreate",
                                   "--set", "replicaCount=2")  # fmt: skip
    assert several.returncode != 0
    assert "leaderElection.enabled=false needs replicaCount 1" in several.stderr
    alone = helm.template(*standalone, "--set", "strategy.type=Recreate")
    assert env_of(the(alone, "Deployment"))["AGENTEXEC_LEADER_ELECTION"]["value"] == "false"
    assert not [o for o in objects(alone) if o["kind"] == "Role"]
    short = helm.template_result("--set", "leaderElection.leaseSeconds=2")
    assert short.returncode != 0
    assert "leaseSeconds" in short.stderr

    everything = the(helm.template("-f", str(EVERYTHING_ON)), "Deployment")
    assert everything["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert env_of(everything)["AGENTEXEC_LEADER_ELECTION_LEASE_SECONDS"]["value"] == "12"
    pod = everything["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "platform-high"
    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"] == everything["spec"]["selector"]["matchLabels"]


def alerts_of(rendered: str) -> dict[str, dict[str, Any]]:
    rule = the(rendered, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_runner_pods_are_scraped_and_alerted_on_with_the_operators_monitoring(
    helm: Helm,
) -> None:
    """The runners have no Service: a PodMonitor scrapes their http port and
    labels their series, which AgentExecRunnerAbsent looks for."""
    rendered = helm.template("-f", str(EVERYTHING_ON))
    monitor = the(rendered, "PodMonitor", runner=True)
    runner = the(rendered, "Deployment", runner=True)
    assert monitor["spec"]["selector"]["matchLabels"] == runner["spec"]["selector"]["matchLabels"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"  # serviceMonitor.labels
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    ports = runner["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert endpoint["port"] in {p["name"] for p in ports}
    assert endpoint["path"] == "/metrics"
    assert {"targetLabel": "component", "replacement": "runner"} in endpoint["relabelings"]
    alerts = alerts_of(rendered)
    assert 'component="runner"' in alerts["AgentExecRunnerAbsent"]["expr"]
    assert alerts["AgentExecRunnerAbsent"]["for"] == "5m"
    assert alerts["AgentExecRunnerAbsent"]["annotations"]["runbook_url"].endswith("#runner-absent")
    assert alerts["AgentExecRunnerAgentsFailing"]["annotations"]["runbook_url"].endswith(
        "#runner-agents-failing"
    )

    # No runner, or no PodMonitor to label its series: nothing to look for,
    # and an absent() alert would fire for ever. Agent failures are counted
    # by any runner (the operator's own too), so that alert stays.
    for off in ("runner.enabled=false", "serviceMonitor.enabled=false"):
        rendered = helm.template("-f", str(EVERYTHING_ON), "--set", off)
        assert not [o for o in objects(rendered) if o["kind"] == "PodMonitor"], off
        alerts = alerts_of(rendered)
        assert "AgentExecRunnerAbsent" not in alerts, off
        assert "AgentExecRunnerAgentsFailing" in alerts, off
        assert "AgentExecOperatorAbsent" in alerts, off
    assert not [o for o in objects(helm.template()) if o["kind"] == "PodMonitor"]


@pytest.mark.parametrize("values", [None, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_every_variable_the_chart_sets_is_one_the_operator_reads(
    helm: Helm, values: Path | None
) -> None:
    """An unknown variable is silently ignored by the operator, so a stale one
    (AGENTEXEC_PEERING, once) would configure nothing: every name the chart
    sets must be one load_settings asks for."""
    asked: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            asked.add(key)
            return super().get(key, default)

    load_settings(Recording())
    rendered = helm.template(*(["-f", str(values)] if values else []))
    env = env_of(the(rendered, "Deployment"))
    assert set(env) - asked == set()
    assert {"POD_NAME", "POD_NAMESPACE", "AGENTEXEC_LEADER_ELECTION_NAME"} <= set(env)
    runner = the(rendered, "Deployment", runner=True)
    # runner.extraEnv is for the agents (their own settings), not for us;
    # the providers file is the chat agent's.
    theirs = (
        {e["name"] for e in yaml.safe_load(values.read_text())["runner"]["extraEnv"]}
        | {PROVIDERS_FILE_ENV}
        if values
        else set()
    )
    assert set(env_of(runner)) - asked - theirs == set()
    assert {"TEMPORAL_ADDRESS", "AGENTEXEC_RUNNER_TASK_QUEUES"} <= set(env_of(runner))


def documented_block(marker: str) -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    found = re.search(rf"<!-- {re.escape(marker)}.*?-->\n```sh\n(.*?)```", text, re.S)
    assert found, f"docs/operations.md has no block marked {marker}"
    return found.group(1)


def test_uninstall_step_releases_executions_left_without_an_operator(
    control_plane: ControlPlane, namespace: str, crd: None, tmp_path: Path
) -> None:
    """After `helm uninstall`, executions still carry the operator's finalizer
    and deleting them (or their namespace) hangs; the documented step removes
    only that finalizer."""
    for name, finalizers in (
        ("left", ["agentexec.io/cancel-workflow"]),
        ("shared", ["example.com/audit", "agentexec.io/cancel-workflow"]),
    ):
        manifest = json.loads(aex.manifest(name))
        manifest["metadata"]["finalizers"] = finalizers
        control_plane.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))
    hung = control_plane.kubectl(
        "delete", "aex", "left", "shared", "-n", namespace, "--timeout=3s", check=False
    )
    assert hung.returncode != 0  # waits for the finalizer that nobody removes

    step = documented_block("uninstall:remove-finalizers")
    assert "kubectl get aex -A " in step
    step = step.replace("kubectl get aex -A ", f"kubectl get aex -n {namespace} ")
    kubectl_dir = tmp_path / "bin"
    kubectl_dir.mkdir()
    (kubectl_dir / "kubectl").symlink_to(venv_tool("kubectl"))
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", step],
        env={**os.environ, "PATH": f"{kubectl_dir}:{os.environ['PATH']}",
             "KUBECONFIG": str(control_plane.kubeconfig)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    gone = control_plane.kubectl("get", "aex", "left", "-n", namespace, check=False)
    assert "NotFound" in gone.stderr
    shared = aex.get(control_plane, namespace, "shared")
    assert shared["metadata"]["finalizers"] == ["example.com/audit"]


def test_image_build_is_pinned_and_licensed(tmp_path: Path) -> None:
    """Every package the image's `pip install .` resolves is pinned in
    constraints.txt, which the Dockerfile applies; the LICENSE is the one
    pyproject.toml declares."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY pyproject.toml README.md constraints.txt build-ca.pe[m] ./" in dockerfile
    assert "PIP_CONSTRAINT=/src/constraints.txt /opt/agentexec/bin/pip install" in dockerfile
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = tmp_path / "report.json"
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--dry-run", "--ignore-installed",
         "--report", str(report), str(ROOT), "setuptools>=69"],
        env={**os.environ, "PIP_CONSTRAINT": str(ROOT / "constraints.txt")},
        check=True, timeout=600,
    )  # fmt: skip
    resolved = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"].lower()): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    resolved.pop("agentexec-operator")
    assert resolved == pins

    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in license_text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()


def test_kube_score_passes_with_only_the_documented_exceptions() -> None:
    """`make chart-score` (part of `make lint`): kube-score on the default and
    the everything-on render; each exception in one file, with its reason."""
    exceptions = ROOT / "charts" / "kube-score-exceptions.txt"
    for line in exceptions.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.match(r"^(default|everything-on|all)\s+(--)?[a-z0-9-]+\s+#\s+\S", line), line
    scored = subprocess.run(
        ["make", "--no-print-directory", "chart-score"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stdout + scored.stderr
    assert "kube-score: default render OK" in scored.stdout
    assert "kube-score: everything-on render OK" in scored.stdout


def test_values_and_schema_are_in_step() -> None:
    """Every value in values.yaml is typed in values.schema.json and has a
    comment above it."""
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((CHART / "values.schema.json").read_text())
    leaves: set[tuple[str, ...]] = set()

    def walk(value: Any, node: dict[str, Any], path: tuple[str, ...]) -> None:
        if not isinstance(value, dict) or "properties" not in node:
            leaves.add(path)
            return
        unknown = set(value) - set(node["properties"])
        assert not unknown, f"{'.'.join(path) or 'values'}: not in the schema: {unknown}"
        for key, sub in value.items():
            walk(sub, node["properties"][key], (*path, key))

    walk(values, schema, ())
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z][A-Za-z0-9]*:", line) and key_path(lines, n) in leaves:
            assert lines[n - 1].strip().startswith("#"), f"values.yaml:{n + 1} has no comment"


def key_path(lines: list[str], n: int) -> tuple[str, ...]:
    """The mapping keys leading to the key on line n (list items are skipped,
    so keys inside lists get paths that are not values)."""
    indent = len(lines[n]) - len(lines[n].lstrip())
    path = [lines[n].strip().split(":")[0]]
    for line in reversed(lines[:n]):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        level = len(line) - len(line.lstrip())
        if level < indent:
            path.insert(0, stripped.split(":")[0])
            indent = level
    return tuple(path)


def test_payload_keys_and_the_runner_s_own_credential_reach_each_pod(
    control_plane: ControlPlane, helm: Helm, namespace: str, tmp_path: Path
) -> None:
    """Issue #22: both Deployments mount the payload keys Secret whole (a key
    added later reaches running pods) and check it at start; the runner
    mounts its own Temporal API key, not the operator's."""
    keys = {k: base64.b64encode(os.urandom(32)).decode() for k in ("k1", "k2")}
    control_plane.kubectl(
        "create", "secret", "generic", "payload-keys", "-n", namespace,
        *(f"--from-literal={k}={v}" for k, v in keys.items()),
    )  # fmt: skip
    for name, key in (("operator-key", "op-key-1"), ("runner-key", "runner-key-1")):
        control_plane.kubectl(
            "create", "secret", "generic", name, "-n", namespace, f"--from-literal=api-key={key}"
        )
    rendered = helm.template(
        "--namespace", namespace,
        "--set", "payloadEncryption.secretName=payload-keys",
        "--set", "payloadEncryption.currentKeyId=k2",
        "--set", "temporal.apiKey.secretName=operator-key",
        "--set", "runner.temporal.apiKey.secretName=runner-key",
    )  # fmt: skip
    seen = {}
    for runner in (False, True):
        spec = the(rendered, "Deployment", runner=runner)["spec"]["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "payload-keys")
        assert volume["secret"] == {"secretName": "payload-keys", "defaultMode": 0o440}
        env = mount_as_kubelet(control_plane, namespace, spec, tmp_path / f"pod-{runner}")
        assert env["AGENTEXEC_PAYLOAD_KEY_ID"] == "k2"
        assert sorted(p.name for p in Path(env["AGENTEXEC_PAYLOAD_KEYS_DIR"]).iterdir()) == [
            "k1",
            "k2",
        ]
        seen[runner] = Path(env["TEMPORAL_API_KEY_FILE"]).read_text()
        command = [str(Path(sys.executable).parent / "agentexec-operator")]
        command += ["runner", "--check-config"] if runner else ["--check-config"]
        checked = subprocess.run(
            command,
            env={"PATH": os.environ["PATH"], "KUBECONFIG": str(control_plane.kubeconfig), **env},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stderr
    assert seen == {False: "op-key-1", True: "runner-key-1"}
    # A current key that is not in the Secret stops the pod at start, naming it.
    bad = {**env, "AGENTEXEC_PAYLOAD_KEY_ID": "k9"}
    refused = subprocess.run(
        [str(Path(sys.executable).parent / "agentexec-operator"), "--check-config"],
        env={"PATH": os.environ["PATH"], "KUBECONFIG": str(control_plane.kubeconfig), **bad},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "current payload key 'k9' is not in" in refused.stderr
    assert all(key not in refused.stderr for key in keys.values())


def test_agent_authoring_joins_a_builtin_role_only_when_asked(helm: Helm) -> None:
    def labels(*args: str) -> dict[str, str]:
        roles = [o for o in objects(helm.template(*args)) if o["kind"] == "ClusterRole"]
        author = next(r for r in roles if r["metadata"]["name"].endswith("-agent-author"))
        assert author["rules"][0]["resources"] == ["agents"]
        return {k: v for k, v in author["metadata"]["labels"].items() if "aggregate-to" in k}

    assert labels() == {}
    assert labels("--set", "rbac.agentAuthoring.aggregateTo={edit}") == {
        "rbac.authorization.k8s.io/aggregate-to-edit": "true"
    }
