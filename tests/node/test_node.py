"""The node itself: Ready, runs pods, gives them cluster DNS and the API
server through the `kubernetes` Service, audits writes, and leaves the machine
clean however it stops."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from localenv.binaries import ROOT
from localenv.docker import DockerEngine
from localenv.node import NODE_NAME, Node
from localenv.registry import Pushed
from tests.support.waiting import eventually

# Run by a pod: resolve the API server's Service name, then call the API
# server through it with the pod's projected ServiceAccount token (what
# kopf's in-cluster login does), and optionally write a Lease.
PROBE = textwrap.dedent(
    """
    import json, os, socket, ssl, sys, urllib.request
    sa = "/var/run/secrets/kubernetes.io/serviceaccount"
    token = open(f"{sa}/token").read().strip()
    ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
    def call(method, path, body):
        req = urllib.request.Request(
            "https://kubernetes.default.svc" + path, method=method,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return json.load(resp)
    out = {"resolved": sorted({a[4][0] for a in socket.getaddrinfo(
        "kubernetes.default.svc.cluster.local", 443, socket.AF_INET)})}
    review = call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                  {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    out["user"] = review["status"]["userInfo"]
    if len(sys.argv) > 1:
        ns = open(f"{sa}/namespace").read().strip()
        call("POST", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
             {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
              "metadata": {"name": sys.argv[1]}, "spec": {"holderIdentity": "probe"}})
    print(json.dumps(out))
    """
)


async def namespace(node: Node, name: str) -> str:
    """A namespace with its default ServiceAccount (made by the controller
    manager a moment later; pods are refused until then)."""
    node.kubectl("create", "namespace", name)
    await eventually(
        lambda: node.kubectl("get", "serviceaccount/default", "-n", name, check=False),
        lambda result: result.returncode == 0,
        what=f"ServiceAccount default in {name}",
    )
    return name


def run_probe(node: Node, image: str, ns: str, name: str, *args: str) -> dict[str, object]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": image,  # from the registry, by digest
                    "command": ["python3", "-c", PROBE, *args],
                }
            ],
        },
    }
    node.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    done = node.kubectl(
        "wait",
        "--for=jsonpath={.status.phase}=Succeeded",
        f"pod/{name}",
        "-n",
        ns,
        "--timeout=90s",
        check=False,
        timeout=120,
    )
    logs = node.kubectl("logs", f"pod/{name}", "-n", ns, check=False).stdout
    if done.returncode != 0:
        status = node.kubectl("get", f"pod/{name}", "-n", ns, "-o", "json", check=False).stdout
        pytest.fail(f"probe pod did not succeed:\n{logs}\n{status[-3000:]}")
    result: dict[str, object] = json.loads(logs.strip().splitlines()[-1])
    return result


def test_failed_start_leaves_nothing(docker_engine: DockerEngine, tmp_path: Path) -> None:
    """A start that fails late (the kubelet exits at once, after the control
    plane, containerd, kube-proxy and CoreDNS are up) is cleaned up by stop().

    It runs first in the tier (conftest orders it), before the session node:
    two nodes cannot run at once (one bridge, one set of KUBE- chains)."""

    class KubeletFails(Node):
        def _kubelet_argv(self, bins: dict[str, Path]) -> list[str]:
            return [*super()._kubelet_argv(bins), "--no-such-flag"]

    if leftovers := Node._host_leftovers():
        pytest.fail(f"a node is up already (this test must run first): {leftovers}")
    broken = KubeletFails.with_images(tmp_path / "broken", docker_engine)
    try:
        with pytest.raises(RuntimeError, match="kubelet exited"):
            broken.start()
        running = {name for name, proc in broken._procs.items() if proc.running}
        assert {"containerd", "kube-proxy", "coredns", "kube-controller-manager"} <= running
        assert broken._host_leftovers(), "the bridge and FORWARD rules were not made"
    finally:
        broken.stop()
    assert broken.leftovers() == []
    broken.stop()  # idempotent
    assert broken.leftovers() == []


def test_node_is_ready(node: Node) -> None:
    data = json.loads(node.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in data["status"]["conditions"]}["Ready"]
    addresses = {a["type"]: a["address"] for a in data["status"]["addresses"]}
    assert ready == "True"
    assert addresses["InternalIP"] == node.host_ip


async def test_pod_runs(node: Node, registry_images: dict[str, Pushed]) -> None:
    """The pause image as a workload, pulled from the registry by digest with
    the default pull policy. The pod is left running on purpose: the
    fixture's teardown must drain it and still leave the machine clean."""
    ns = await namespace(node, "t-pod-runs")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": ns},
        "spec": {"containers": [{"name": "pause", "image": registry_images["pause"].ref}]},
    }
    node.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    node.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "-n", ns, "--timeout=60s")
    ip = node.kubectl("get", "pod/sleeper", "-n", ns, "-o", "jsonpath={.status.podIP}").stdout
    assert ip.startswith("10.244.0.")


async def test_pod_resolves_and_reaches_the_api_server(
    node: Node, registry_images: dict[str, Pushed]
) -> None:
    """Trap 3: in-cluster login dials kubernetes.default.svc, so a pod needs
    cluster DNS, the Service routed by kube-proxy, and a projected token."""
    ns = await namespace(node, "t-in-cluster")
    out = run_probe(node, registry_images["python"].ref, ns, "probe")
    assert out["resolved"] == [node.plane.service_ip]
    user = out["user"]
    assert isinstance(user, dict)
    assert user["username"] == f"system:serviceaccount:{ns}:default"
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["probe"]


async def test_audit_log_has_status_and_lease_writes_with_the_pod(
    node: Node, registry_images: dict[str, Pushed]
) -> None:
    """What the scenario tests read: who wrote an AgentExecution's status and
    a Lease, down to the pod (user.extra) for in-cluster writers."""
    ns = await namespace(node, "t-audit")
    node.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    try:
        await _audit_checks(node, registry_images["python"].ref, ns)
    finally:
        # The chart scenarios install the CRDs with their release (helm
        # refuses to adopt CRDs it did not create).
        node.kubectl("delete", "-f", str(ROOT / "crds"), "--wait=true", check=False)


async def _audit_checks(node: Node, image: str, ns: str) -> None:
    node.kubectl(
        "wait", "--for=condition=Established", "crd/agentexecutions.agentexec.io", "--timeout=30s"
    )
    node.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples" / "echo.yaml"))
    node.kubectl(
        "patch", "agentexecution/hello-echo", "-n", ns, "--subresource=status",
        "--type=merge", "-p", '{"status": {"phase": "Pending"}}',
    )  # fmt: skip
    node.kubectl("create", "role", "leases", "-n", ns, "--verb=create", "--resource=leases")
    node.kubectl(
        "create", "rolebinding", "leases", "-n", ns, "--role=leases",
        f"--serviceaccount={ns}:default",
    )  # fmt: skip
    run_probe(node, image, ns, "lease-writer", "from-a-pod")

    events = [json.loads(line) for line in node.audit_log.read_text().splitlines()]
    mine = [e for e in events if e.get("objectRef", {}).get("namespace") == ns]
    status_writes = [
        e
        for e in mine
        if e["objectRef"].get("resource") == "agentexecutions"
        and e["objectRef"].get("subresource") == "status"
        and e["verb"] == "patch"
    ]
    lease_writes = [
        e for e in mine if e["objectRef"].get("resource") == "leases" and e["verb"] == "create"
    ]
    assert status_writes, f"no status write audited among {len(mine)} events of {ns}"
    assert status_writes[0]["level"] == "Metadata"
    assert [e["user"]["extra"]["authentication.kubernetes.io/pod-name"] for e in lease_writes] == [
        ["lease-writer"]
    ]
    # Node heartbeats are left out, so the log stays small.
    assert not [e for e in events if e.get("objectRef", {}).get("namespace") == "kube-node-lease"]
