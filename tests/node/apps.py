"""What the node-tier scenarios put on a cluster, and how they look at it.

Cluster-agnostic: the same code drives the local node (`localenv.node`) and
a kind cluster (`make e2e-kind`). A cluster here is anything with
`kubeconfig`, `kubectl(...)`, `kubectl_json(...)`, `load_image(tar)` and
`audit_log` (None where the API server's audit log cannot be read).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from temporalio.client import Client

from agentexec.status import workflow_id
from localenv.helm import CHART

TEMPORAL_NAMESPACE = "temporal"
# The chart's default temporal.address names this Service.
TEMPORAL_SERVICE = "temporal-frontend"
OPERATOR_NAMESPACE = "agentexec"
RELEASE = "agentexec"
# The chart's fullname: the operator Deployment and its leader-election Lease.
FULLNAME = f"{RELEASE}-agentexec-operator"


class Cluster(Protocol):
    kubeconfig: Path
    audit_log: Path | None

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> Any: ...

    def kubectl_json(self, *args: str) -> dict[str, Any]: ...

    def load_image(self, tar: Path) -> None: ...


def temporal_manifests(image: str) -> str:
    """Temporal's dev server as a Deployment and its Service, in-memory: a
    deleted pod comes back empty, as a freshly restarted server does."""
    labels = {"app.kubernetes.io/name": "temporal"}
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEMPORAL_NAMESPACE}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "temporal", "namespace": TEMPORAL_NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "temporal",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "ports": [{"name": "grpc", "containerPort": 7233}],
                                "readinessProbe": {
                                    "tcpSocket": {"port": 7233},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": TEMPORAL_SERVICE, "namespace": TEMPORAL_NAMESPACE},
            "spec": {"selector": labels, "ports": [{"name": "grpc", "port": 7233}]},
        },
    ]
    return "\n---\n".join(json.dumps(doc) for doc in docs)


def diagnose(cluster: Cluster) -> str:
    """Pods, recent events and the operator's and runner's last log lines."""
    parts = []
    for args in (
        ("get", "pods", "-A", "-o", "wide"),
        ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ("logs", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/instance=" + RELEASE,
         "--all-containers", "--tail=30", "--prefix"),
    ):  # fmt: skip
        done = cluster.kubectl(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{done.stdout}{done.stderr}")
    return "\n".join(parts)


def temporal_address(cluster: Cluster) -> str:
    """The Service's cluster IP, which the host reaches through kube-proxy."""
    svc = cluster.kubectl_json("get", "svc", "-n", TEMPORAL_NAMESPACE, TEMPORAL_SERVICE)
    return f"{svc['spec']['clusterIP']}:7233"


def scale_temporal(cluster: Cluster, replicas: int) -> None:
    cluster.kubectl(
        "scale", "-n", TEMPORAL_NAMESPACE, "deployment/temporal", f"--replicas={replicas}"
    )
    if replicas:
        cluster.kubectl(
            "rollout", "status", "-n", TEMPORAL_NAMESPACE, "deployment/temporal", "--timeout=120s"
        )
    else:
        cluster.kubectl(
            "wait", "--for=delete", "pod", "-n", TEMPORAL_NAMESPACE,
            "-l", "app.kubernetes.io/name=temporal", "--timeout=60s",
        )  # fmt: skip


def helm_values(repository: str, tag: str, *extra: str) -> list[str]:
    """The chart's defaults except the image (local, never pulled) and what
    a scenario adds."""
    return [
        "--set", f"image.repository={repository}",
        "--set", f"image.tag={tag}",
        "--set", "image.pullPolicy=Never",
        *extra,
    ]  # fmt: skip


def operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = cluster.kubectl_json(
        "get", "pods", "-n", OPERATOR_NAMESPACE,
        "-l", f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=agentexec-operator",
    )["items"]  # fmt: skip
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def container_id(pod: dict[str, Any]) -> str:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    cid = statuses[0].get("containerID", "") if statuses else ""
    return str(cid).split("://", 1)[-1]


def restarts(pod: dict[str, Any]) -> int:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return int(statuses[0].get("restartCount", 0)) if statuses else 0


def ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def need_host_view(cluster: Cluster) -> None:
    """Skip where the host cannot see the pods' processes (kind on a laptop
    whose Docker runs in a VM); the local node always can."""
    if not getattr(cluster, "host_sees_containers", True):
        pytest.skip("this host cannot see the cluster's container processes")


def container_pids(cid: str) -> list[int]:
    """The host PIDs of a container's processes: the ones whose cgroup path
    names its ID (the kubelet's cgroupfs layout; kind's nodes share the
    kernel, so this holds there too)."""
    assert cid, "the container has no ID yet"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if cid in (entry / "cgroup").read_text():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def signal_container(cid: str, sig: signal.Signals) -> list[int]:
    pids = container_pids(cid)
    assert pids, f"no process of container {cid[:12]} found in /proc"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def root_mount_options(pid: int) -> set[str]:
    """The mount options of a process's root filesystem, from the host."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return set(fields[5].split(","))
    raise AssertionError(f"no root mount for pid {pid}")


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


async def workflow_runs(address: str, namespace: str, obj: dict[str, Any]) -> int:
    """How many runs Temporal holds of this execution's workflow."""
    client = await Client.connect(address)
    wid = workflow_id(namespace, obj["metadata"]["name"], obj["metadata"]["uid"])
    count = 0
    async for _ in client.list_workflows(f"WorkflowId = '{wid}'"):
        count += 1
    return count


def status_writes(audit_log: Path, namespace: str) -> Iterator[tuple[float, str, str]]:
    """(time, pod, object) of every successful AgentExecution status write in
    `namespace` the API server audited, in the order it served them."""
    from datetime import datetime

    for line in audit_log.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        ref = event.get("objectRef") or {}
        if (
            event.get("stage") != "ResponseComplete"
            or ref.get("resource") != "agentexecutions"
            or ref.get("subresource") != "status"
            or ref.get("namespace") != namespace
            or event.get("verb") not in ("patch", "update")
            or (event.get("responseStatus") or {}).get("code", 500) >= 300
        ):
            continue
        extra = (event.get("user") or {}).get("extra") or {}
        pod = (extra.get("authentication.kubernetes.io/pod-name") or ["<not a pod>"])[0]
        stamp = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        yield stamp.timestamp(), pod, f"{ref.get('namespace')}/{ref.get('name')}"


def execution(name: str, message: str | None = None, **parameters: Any) -> str:
    spec: dict[str, Any] = {"agent": "echo", "message": message or name}
    if parameters:
        spec["parameters"] = parameters
    return json.dumps(
        {
            "apiVersion": "agentexec.io/v1alpha1",
            "kind": "AgentExecution",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def create_executions(
    cluster: Cluster, namespace: str, names: list[str], **parameters: Any
) -> float:
    """Create them in one kubectl call; returns when it was sent."""
    sent = time.time()
    cluster.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin="\n---\n".join(execution(n, **parameters) for n in names),
    )  # fmt: skip
    return sent


CHART_PATH = CHART
