"""What the node-tier scenarios put on a cluster, and how they look at it.

Cluster-agnostic: a cluster here (a kind cluster, localenv.kind) is
anything with `kubeconfig`, `kubectl(...)`, `kubectl_json(...)`,
`audit_log` (None where the API server's audit log cannot be read),
`registry_host`, `host_ip` (an address of this host that pods reach) and
`trust_registry(address)`. Every image comes from the registry, by digest,
with Kubernetes' default pull policy.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
from kubernetes import client as k8s
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client

from agentexec.status import workflow_id
from localenv.helm import CHART
from localenv.kube import api_client
from localenv.registry import Pushed

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
    registry_host: str

    @property
    def host_ip(self) -> str: ...

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> Any: ...

    def kubectl_json(self, *args: str) -> dict[str, Any]: ...

    def trust_registry(self, address: str) -> None: ...


def temporal_manifests(image: str, db_dir: str | None = None) -> str:
    """Temporal's dev server as a Deployment and its Service, in-memory: a
    deleted pod comes back empty, as a freshly restarted server does. With
    `db_dir` (a directory on the node), its database is kept there and
    survives scaling to zero, as a production Temporal's does."""
    labels = {"app.kubernetes.io/name": "temporal"}
    container: dict[str, Any] = {
        "name": "temporal",
        "image": image,
        "ports": [{"name": "grpc", "containerPort": 7233}],
        "readinessProbe": {"tcpSocket": {"port": 7233}, "periodSeconds": 1},
    }
    pod: dict[str, Any] = {"terminationGracePeriodSeconds": 2, "containers": [container]}
    if db_dir is not None:
        container["args"] = ["--db-filename", "/data/temporal.db", "--namespace", "default"]
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        # A hostPath directory is root's: the server runs as root to write it.
        container["securityContext"] = {"runAsUser": 0}
        pod["volumes"] = [
            {"name": "data", "hostPath": {"path": db_dir, "type": "DirectoryOrCreate"}}
        ]
        pod["terminationGracePeriodSeconds"] = 10  # let SQLite close
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEMPORAL_NAMESPACE}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "temporal", "namespace": TEMPORAL_NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                # Recreate: two servers never share the database file.
                "strategy": {"type": "Recreate"},
                "template": {"metadata": {"labels": labels}, "spec": pod},
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
    core = k8s.CoreV1Api(api_client(cluster.kubeconfig))
    svc = core.read_namespaced_service(TEMPORAL_SERVICE, TEMPORAL_NAMESPACE)
    return f"{svc.spec.cluster_ip}:7233"


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


def helm_values(image: Pushed, *extra: str) -> list[str]:
    """The chart's defaults except the image (the registry's, pinned by
    digest; the chart's own pull policy) and what a scenario adds."""
    return [
        "--set", f"image.repository={image.repository}",
        "--set", f"image.tag={image.tag}",
        "--set", f"image.digest={image.digest}",
        *extra,
    ]  # fmt: skip


def operator_pods(cluster: Cluster) -> list[dict[str, Any]]:
    core = k8s.CoreV1Api(api_client(cluster.kubeconfig))
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=agentexec-operator"
    listed = core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=selector)
    pods: list[dict[str, Any]] = core.api_client.sanitize_for_serialization(listed)["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def runner_pods(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """The release's runner pods by name, terminating ones included."""
    core = k8s.CoreV1Api(api_client(cluster.kubeconfig))
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=runner"
    listed = core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=selector)
    pods: list[dict[str, Any]] = core.api_client.sanitize_for_serialization(listed)["items"]
    return {p["metadata"]["name"]: p for p in pods}


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


async def running_agent(address: str, namespace: str, obj: dict[str, Any]) -> str | None:
    """The worker identity of the runner running the execution's agent now
    (`runner:POD:PID`), None when no attempt is running. From the workflow's
    pending activities: a history records an attempt's start only once it
    ends."""
    client = await Client.connect(address)
    wid = workflow_id(namespace, obj["metadata"]["name"], obj["metadata"]["uid"])
    described = await client.get_workflow_handle(wid).describe()
    for pending in described.raw_description.pending_activities:
        if (
            pending.activity_type.name == "run_agent"
            and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        ):
            return str(pending.last_worker_identity)
    return None


async def agent_attempts(address: str, namespace: str, obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Each run_agent attempt of the execution's workflow, in order: when a
    runner started it and when it ended (seconds), which runner (its worker
    identity, `runner:POD:PID`), the checkpoint it began from (its request's
    resume_from), and how it ended (the close event's failure type, None
    when it completed). An attempt still running has no start yet (Temporal
    writes it when the attempt ends): see running_agent."""
    client = await Client.connect(address)
    wid = workflow_id(namespace, obj["metadata"]["name"], obj["metadata"]["uid"])
    history = json.loads((await client.get_workflow_handle(wid).fetch_history()).to_json())
    return attempts_in(history)


def attempts_in(history: dict[str, Any]) -> list[dict[str, Any]]:
    """agent_attempts, from a history as JSON."""
    attempts: dict[str, dict[str, Any]] = {}
    for event in history["events"]:
        scheduled = event.get("activityTaskScheduledEventAttributes")
        if scheduled and scheduled["activityType"]["name"] == "run_agent":
            request = json.loads(base64.b64decode(scheduled["input"]["payloads"][0]["data"]))
            attempts[event["eventId"]] = {"resume_from": request.get("resume_from")}
            continue
        for key in (
            "activityTaskStartedEventAttributes",
            "activityTaskCompletedEventAttributes",
            "activityTaskFailedEventAttributes",
            "activityTaskTimedOutEventAttributes",
            "activityTaskCanceledEventAttributes",
        ):
            attrs = event.get(key)
            if attrs is None or attrs.get("scheduledEventId") not in attempts:
                continue
            at = datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00")).timestamp()
            attempt = attempts[attrs["scheduledEventId"]]
            if key == "activityTaskStartedEventAttributes":
                attempt["started"] = at
                attempt["runner"] = attrs.get("identity", "")
            else:
                attempt["ended"] = at
                failure = attrs.get("failure", {})
                attempt["failure"] = failure.get("applicationFailureInfo", {}).get("type") or (
                    "Timeout" if "timeoutFailureInfo" in failure else None
                )
    return list(attempts.values())


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


def successive_writers(audit_log: Path, namespace: str) -> tuple[int, list[str]]:
    """(status writes, the pods that made them in turn) in `namespace`,
    failing if a pod wrote again after another took over: where leadership
    only ever moves on to another pod, any return is two writers at once."""
    writes = sorted(status_writes(audit_log, namespace))
    assert writes, "no status write was audited"
    writers: list[str] = []
    for _, pod, _ in writes:
        if not writers or writers[-1] != pod:
            assert pod not in writers, f"{pod} wrote again after {writers[-1]} took over: {writers}"
            writers.append(pod)
    assert "<not a pod>" not in writers
    return len(writes), writers


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
