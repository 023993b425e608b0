"""Chart values of issue #21: umbrella charts (`global`), the finished-TTL
default, runner autoscaling, extra volumes and envFrom on both workloads,
provider proxy/CA/header, and secure metrics; of issue #23: the runners' MCP
servers and the progress interval; rendered and checked by the real API
server (server-side dry run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentexec.runner.tools import parse_servers
from localenv.helm import CHART, EVERYTHING_ON, Helm
from localenv.kube import ControlPlane
from tests.e2e.test_chart import API_SERVER, env_of, objects, the


@pytest.fixture
def helm(control_plane: ControlPlane, tmp_path: Path) -> Helm:
    return Helm(control_plane, tmp_path / "helm")


def server_accepts(plane: ControlPlane, namespace: str, *docs: dict[str, Any]) -> None:
    for doc in docs:
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
        valid = plane.kubectl(
            "apply", "--dry-run=server", "-f", "-", stdin=json.dumps(doc), check=False
        )
        assert valid.returncode == 0, f"{doc['kind']}: {valid.stderr}"


def test_an_umbrella_chart_that_sets_global_renders_and_typos_are_still_refused(
    helm: Helm, tmp_path: Path
) -> None:
    """Helm hands `global` to every subchart: the schema accepts it (and only
    it) besides the chart's own values."""
    umbrella = tmp_path / "platform"
    (umbrella / "charts").mkdir(parents=True)
    shutil.copytree(CHART, umbrella / "charts" / "agentexec-operator")
    (umbrella / "Chart.yaml").write_text(
        yaml.safe_dump({"apiVersion": "v2", "name": "platform", "version": "1.0.0",
                        "dependencies": [{"name": "agentexec-operator", "version": "0.1.0"}]})
    )  # fmt: skip
    (umbrella / "values.yaml").write_text(
        yaml.safe_dump({"global": {"imageRegistry": "registry.example.com", "env": "prod"},
                        "agentexec-operator": {"replicaCount": 2}})
    )  # fmt: skip
    rendered = helm.run("template", "platform", str(umbrella)).stdout
    deploy = the(rendered, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    typo = helm.run(
        "template", "platform", str(umbrella), "--set", "agentexec-operator.replicaCont=2",
        check=False,
    )  # fmt: skip
    assert typo.returncode != 0
    assert "additional properties 'replicaCont' not allowed" in typo.stderr
    # The chart on its own takes `global` too (as `helm install --set global.x=` does).
    helm.template("--set", "global.imageRegistry=registry.example.com")
    assert "additional properties 'runer' not allowed" in (
        helm.template_result("--set", "runer.enabled=false").stderr
    )


def test_finished_executions_are_deleted_after_a_day_unless_told(helm: Helm) -> None:
    def ttl(*args: str) -> str:
        env = env_of(the(helm.template(*args), "Deployment"))
        return str(env["AGENTEXEC_TTL_SECONDS_AFTER_FINISHED"]["value"])

    assert ttl() == "86400"
    assert ttl("--set", "executions.ttlSecondsAfterFinished=0") == "0"
    # null keeps them (the operator's "never"), as before this default.
    assert ttl("--set", "executions.ttlSecondsAfterFinished=null") == "never"


def test_runner_autoscaling_leaves_the_replica_count_to_the_autoscaler(
    control_plane: ControlPlane, helm: Helm, namespace: str
) -> None:
    fixed = the(helm.template(), "Deployment", runner=True)
    assert fixed["spec"]["replicas"] == 2
    assert not [o for o in objects(helm.template()) if o["kind"] == "HorizontalPodAutoscaler"]

    rendered = helm.template(
        "--set", "runner.autoscaling.enabled=true", "--set", "runner.autoscaling.minReplicas=3",
        "--set", "runner.autoscaling.maxReplicas=9", "--set", "runner.replicaCount=5",
    )  # fmt: skip
    runner = the(rendered, "Deployment", runner=True)
    assert "replicas" not in runner["spec"]
    hpa = the(rendered, "HorizontalPodAutoscaler", runner=True)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": runner["metadata"]["name"]
    }  # fmt: skip
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert the(rendered, "PodDisruptionBudget", runner=True)["spec"]["minAvailable"] == 1
    server_accepts(control_plane, namespace, runner, hpa)

    keda = helm.template(
        "--set", "runner.autoscaling.keda.enabled=true",
        "--set", "runner.autoscaling.minReplicas=0",
        "--set", "runner.taskQueues={agentexec-runner,gpu}",
        "--set", "runner.autoscaling.keda.authenticationRef=temporal-cloud",
        "--set", "temporal.tls.serverName=temporal.example.com",
    )  # fmt: skip
    assert "replicas" not in the(keda, "Deployment", runner=True)["spec"]
    assert not [o for o in objects(keda) if o["kind"] == "HorizontalPodAutoscaler"]
    assert not [
        o
        for o in objects(keda)
        if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"].endswith("runner")
    ]
    scaled = the(keda, "ScaledObject", runner=True)["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 10)
    assert [t["metadata"]["taskQueue"] for t in scaled["triggers"]] == ["agentexec-runner", "gpu"]
    trigger = scaled["triggers"][0]
    assert trigger["type"] == "temporal"
    assert trigger["metadata"] == {
        "endpoint": "temporal-frontend.temporal:7233", "namespace": "default",
        "taskQueue": "agentexec-runner", "queueTypes": "activity", "targetQueueSize": "5",
        "activationTargetQueueSize": "0", "tlsServerName": "temporal.example.com",
    }  # fmt: skip
    assert trigger["authenticationRef"] == {"name": "temporal-cloud"}

    both = helm.template_result(
        "--set", "runner.autoscaling.enabled=true", "--set", "runner.autoscaling.keda.enabled=true"
    )  # fmt: skip
    assert "choose one" in both.stderr
    zero = helm.template_result(
        "--set", "runner.autoscaling.enabled=true", "--set", "runner.autoscaling.minReplicas=0"
    )  # fmt: skip
    assert "scaling to zero needs keda" in zero.stderr


def test_extra_volumes_mounts_and_env_from_reach_both_workloads(
    control_plane: ControlPlane, helm: Helm, namespace: str
) -> None:
    rendered = helm.template("-f", str(EVERYTHING_ON))
    for runner, source in ((False, "configMapRef"), (True, "secretRef")):
        deploy = the(rendered, "Deployment", runner=runner)
        pod = deploy["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert {"name": "corp-ca", "configMap": {"name": "corp-ca-bundle"}} in pod["volumes"]
        assert {"name": "corp-ca", "mountPath": "/etc/agentexec/ca", "readOnly": True} in (
            container["volumeMounts"]
        )
        assert source in container["envFrom"][0]
        server_accepts(control_plane, namespace, deploy)


def test_runner_proxy_and_provider_ca_and_key_header_are_rendered(helm: Helm) -> None:
    rendered = helm.template("-f", str(EVERYTHING_ON))
    env = env_of(the(rendered, "Deployment", runner=True))
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.corp.example:3128"
    assert env["NO_PROXY"]["value"] == ".svc,.cluster.local"
    assert "HTTP_PROXY" not in env
    providers_cm = next(
        o
        for o in objects(rendered)
        if o["kind"] == "ConfigMap" and "providers" in o["metadata"]["name"]
    )
    providers = json.loads(providers_cm["data"]["providers.json"])["providers"]
    assert providers["azure"]["apiKeyHeader"] == "api-key"
    assert providers["azure"]["apiKeyFile"] == "/var/run/agentexec/providers/azure/apiKey"
    assert providers["internal"] == {
        "baseURL": "https://llm.corp.example/v1", "caFile": "/etc/agentexec/ca/ca.crt"
    }  # fmt: skip
    refused = helm.template_result(
        "--set", "runner.providers.p.baseURL=https://x", "--set", "runner.providers.p.caFile=ca.crt"
    )  # fmt: skip
    assert "caFile" in refused.stderr


def test_runner_mcp_servers_and_the_progress_interval_are_rendered(
    helm: Helm, control_plane: ControlPlane, namespace: str
) -> None:
    """runner.mcpServers (#23): the MCP servers file in a ConfigMap, each
    header's Secret mounted (whole volume: rotations reach the runner) where
    the file says; the API server accepts both."""
    rendered = helm.template("-f", str(EVERYTHING_ON))
    runner = the(rendered, "Deployment", runner=True)
    env = env_of(runner)
    assert env["AGENTEXEC_MCP_SERVERS_FILE"]["value"] == "/etc/agentexec/mcp/mcp-servers.json"
    config = next(
        o
        for o in objects(rendered)
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-mcp-servers")
    )
    servers = json.loads(config["data"]["mcp-servers.json"])["servers"]
    assert servers["github"] == {
        "url": "https://mcp.example.com/mcp",
        "headers": {"X-Team": "agents"},
        "headerFiles": {"Authorization": "/var/run/agentexec/mcp/github/authorization"},
    }
    assert servers["files"] == {"url": "http://mcp-files.tools.svc:8080/mcp"}
    # The runner reads the file as rendered.
    parsed = parse_servers(json.loads(config["data"]["mcp-servers.json"]))
    assert parsed["github"].header_files == {
        "Authorization": Path("/var/run/agentexec/mcp/github/authorization")
    }
    pod = runner["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["mcp-github"]["mountPath"] == "/var/run/agentexec/mcp/github"
    assert "subPath" not in mounts["mcp-github"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    item = {"key": "authorization", "path": "authorization"}
    assert volumes["mcp-github"]["projected"]["sources"] == [
        {"secret": {"name": "github-mcp", "items": [item]}}
    ]
    assert "mcp-files" not in volumes  # no header Secrets, no volume
    server_accepts(control_plane, namespace, config, runner)
    operator = env_of(the(rendered, "Deployment"))
    assert operator["AGENTEXEC_PROGRESS_INTERVAL_SECONDS"]["value"] == "5"
    credential = helm.template_result(
        "--set", "runner.mcpServers.x.url=https://x",
        "--set", "runner.mcpServers.x.headers.Api-Key=k",
    )  # fmt: skip
    assert credential.returncode != 0


def test_secure_metrics_default_follows_the_network_policy(
    control_plane: ControlPlane, helm: Helm, namespace: str
) -> None:
    """On by default where no NetworkPolicy limits who reaches the pod; off
    with the policy unless asked; RBAC for the reviews and the reader role
    come with it."""
    default = helm.template("--set", "serviceMonitor.enabled=true")
    deploy = the(default, "Deployment")
    env = env_of(deploy)
    assert env["AGENTEXEC_METRICS_SECURE"]["value"] == "true"
    assert env["AGENTEXEC_METRICS_PORT"]["value"] == "8443"
    assert "AGENTEXEC_METRICS_CERT_FILE" not in env  # self-signed
    ports = {
        p["name"]: p["containerPort"]
        for p in deploy["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports == {"http": 8080, "https-metrics": 8443}
    service = the(default, "Service")
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "https-metrics"}
    roles = {o["metadata"]["name"]: o for o in objects(default) if o["kind"] == "ClusterRole"}
    auth = roles["rel-agentexec-operator-metrics-auth"]["rules"]
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
            "verbs": ["create"]} in auth  # fmt: skip
    assert {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
            "verbs": ["create"]} in auth  # fmt: skip
    assert roles["rel-agentexec-operator-metrics-reader"]["rules"] == [
        {"nonResourceURLs": ["/metrics", "/statusz"], "verbs": ["get"]}
    ]
    [endpoint] = the(default, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"] == {
        "name": "rel-agentexec-operator-metrics-scraper", "key": "token"
    }  # fmt: skip

    with_policy = helm.template("--set", "networkPolicy.enabled=true", *API_SERVER)
    assert "AGENTEXEC_METRICS_SECURE" not in env_of(the(with_policy, "Deployment"))
    assert not [o for o in objects(with_policy) if o["metadata"]["name"].endswith("-metrics-auth")]
    off = helm.template("--set", "metrics.secure.enabled=false")
    assert "AGENTEXEC_METRICS_SECURE" not in env_of(the(off, "Deployment"))

    # Both on, with a certificate: mounted, verified by the monitor, allowed
    # through the policy.
    everything = helm.template("-f", str(EVERYTHING_ON))
    env = env_of(the(everything, "Deployment"))
    assert env["AGENTEXEC_METRICS_CERT_FILE"]["value"] == "/etc/agentexec/metrics-tls/tls.crt"
    [endpoint] = the(everything, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"]["ca"] == {
        "secret": {"name": "agentexec-metrics-tls", "key": "ca.crt"}
    }
    assert endpoint["tlsConfig"]["serverName"] == "rel-agentexec-operator-metrics.default.svc"
    [ingress] = the(everything, "NetworkPolicy")["spec"]["ingress"]
    assert {"port": "https-metrics", "protocol": "TCP"} in ingress["ports"]
    kinds = ("Deployment", "Service", "Secret", "ServiceAccount")
    server_accepts(control_plane, namespace, *[o for o in objects(default) if o["kind"] in kinds])
