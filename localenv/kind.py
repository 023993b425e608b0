"""A kind cluster: the node tier's cluster (`make test-node`, `make e2e-kind`).

Everything comes from this machine: kind from its Go module (KIND_VERSION),
its node image built here by localenv.kindimages (kind's own base Dockerfile
on a local Debian base, Kubernetes from its Go modules, `kind build
node-image`), and the images the scenarios run pulled from the project's
registry (localenv.registry), which the node's containerd is told to reach
over plain HTTP (`trust_registry`).

It offers what the node tier's scenarios use of a cluster: `kubeconfig`,
`kubectl`, `kubectl_json`, `audit_log` (the API server's audit log, on the
host through a mount), `registry_host` (where a registry must listen for
this cluster to pull from it), `host_ip` (an address of this host that pods
reach: the same gateway) and `trust_registry`.

What differs from kind's defaults, and why:
- `disableDefaultCNI`: kind's CNI daemon, kindnetd, cannot be built here
  (localenv.kindimages); a ptp configuration of the CNI plugins kind ships
  is written on the node once it has its pod CIDR (one node needs nothing
  more). Pods get routes to the cluster and the host only.
- `failCgroupV1: false`: kubelet 1.36 refuses cgroup v1 otherwise (this
  machine's).
- `restrict_oom_score_adj`: no CAP_SYS_RESOURCE here (the node's runc could
  not set a negative oom_score_adj), and `config_path` for registry hosts.
- Routes on the host to the Service range and the pod range through the
  node: the tests reach a Service's cluster IP, and a pod's packets to the
  host (from its own address: nothing masquerades them) find their way
  back, so a server the tests start on `host_ip` serves pods.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from localenv.binaries import built_tool, venv_tool
from localenv.docker import DockerEngine
from localenv.kube import api_client
from localenv.procs import wait_for

# Metadata for writes of AgentExecutions (status included) and Leases: the
# scenario tests read who wrote (user.extra carries a pod's name for its
# ServiceAccount token). Node heartbeats (kube-node-lease) are left out.
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "None",
            "namespaces": ["kube-node-lease"],
            "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
        },
        {
            "level": "Metadata",
            "verbs": ["create", "update", "patch", "delete"],
            "resources": [
                {
                    "group": "agentexec.io",
                    "resources": ["agentexecutions", "agentexecutions/status"],
                },
                {"group": "coordination.k8s.io", "resources": ["leases"]},
            ],
        },
        {"level": "None"},
    ],
}

SERVICE_CIDR = "10.96.0.0/16"  # kind's default serviceSubnet
POD_SUBNET = "10.244.0.0/16"  # kind's default podSubnet
# What the host routes through the node (KindCluster.start).
ROUTED = (SERVICE_CIDR, POD_SUBNET)
AUDIT_DIR = "/etc/kubernetes/audit"
AUDIT_LOG_DIR = "/var/log/kubernetes/audit"


def build_cluster_config(node_image: str, workdir: Path) -> dict[str, Any]:
    """kind's Cluster config (pure: the files it names are written by start())."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {
            "disableDefaultCNI": True,
            "podSubnet": POD_SUBNET,
            "serviceSubnet": SERVICE_CIDR,
        },
        "nodes": [
            {
                "role": "control-plane",
                "image": node_image,
                "extraMounts": [
                    {
                        "hostPath": str(workdir / "audit"),
                        "containerPath": AUDIT_DIR,
                        "readOnly": True,
                    },
                    {"hostPath": str(workdir / "audit-log"), "containerPath": AUDIT_LOG_DIR},
                ],
            }
        ],
        "kubeadmConfigPatches": [
            yaml.safe_dump({"kind": "KubeletConfiguration", "failCgroupV1": False}),
        ],
        "kubeadmConfigPatchesJSON6902": [
            {
                "group": "kubeadm.k8s.io",
                "version": "v1beta4",
                "kind": "ClusterConfiguration",
                "patch": yaml.safe_dump(
                    [
                        {
                            "op": "add",
                            "path": "/apiServer/extraArgs/-",
                            "value": {
                                "name": "audit-policy-file",
                                "value": f"{AUDIT_DIR}/policy.yaml",
                            },
                        },
                        {
                            "op": "add",
                            "path": "/apiServer/extraArgs/-",
                            "value": {
                                "name": "audit-log-path",
                                "value": f"{AUDIT_LOG_DIR}/audit.log",
                            },
                        },
                        {
                            "op": "add",
                            "path": "/apiServer/extraVolumes",
                            "value": [
                                {
                                    "name": "audit-policy",
                                    "hostPath": AUDIT_DIR,
                                    "mountPath": AUDIT_DIR,
                                    "readOnly": True,
                                    "pathType": "DirectoryOrCreate",
                                },
                                {
                                    "name": "audit-log",
                                    "hostPath": AUDIT_LOG_DIR,
                                    "mountPath": AUDIT_LOG_DIR,
                                    "pathType": "DirectoryOrCreate",
                                },
                            ],
                        },
                    ]
                ),
            }
        ],
        "containerdConfigPatches": [
            f"[{cri}]\n  restrict_oom_score_adj = true\n"
            f'[{cri}.registry]\n  config_path = "/etc/containerd/certs.d"\n'
        ],
    }


def build_cni_config(pod_cidr: str, node_ip: str, host_ip: str) -> dict[str, Any]:
    """The CNI plugins' ptp network for one node (what kindnetd writes, less
    the default route: pods reach the cluster and the host only)."""
    return {
        "cniVersion": "1.0.0",
        "name": "agentexec-kind",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": False,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "dataDir": "/run/cni-ipam-state",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [
                        {"dst": POD_SUBNET},
                        {"dst": SERVICE_CIDR},
                        {"dst": f"{node_ip}/32"},
                        {"dst": f"{host_ip}/32"},
                    ],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def build_registry_hosts(address: str) -> str:
    """containerd's hosts.toml: pull `address`'s images over plain HTTP."""
    return (
        f'server = "http://{address}"\n\n'
        f'[host."http://{address}"]\n  capabilities = ["pull", "resolve"]\n'
    )


class KindCluster:
    def __init__(self, workdir: Path, engine: DockerEngine, name: str = "agentexec-e2e") -> None:
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.engine = engine
        self.name = name
        self.node = f"{name}-control-plane"
        self.kubectl_path = venv_tool("kubectl")
        self.kubeconfig = self.workdir / "kubeconfig"
        self.audit_log: Path | None = self.workdir / "audit-log" / "audit.log"
        # kind's nodes are containers on this kernel only on Linux: elsewhere
        # (Docker Desktop's VM) the host cannot see or signal pod processes.
        self.host_sees_containers = sys.platform.startswith("linux")
        self.node_ip = ""
        self.registry_host = ""
        self.timings: dict[str, float] = {}
        self._routes: list[str] = []

    @property
    def host_ip(self) -> str:
        """An address of this host that pods reach (the Docker network's
        gateway; the pods' CNI configuration routes it through the node)."""
        return self.registry_host

    @staticmethod
    def skip_reason() -> str | None:
        if not sys.platform.startswith("linux"):
            return None  # Docker Desktop: kind runs, the host-view tests skip themselves
        if os.geteuid() != 0:
            return "kind's nodes and the host's routes to its Services and pods need root here"
        return None

    def start(self) -> None:
        from localenv import kindimages  # builds with Docker: imported when used

        started = time.monotonic()
        image = kindimages.node_image(self.engine)
        self.timings["node_image"] = time.monotonic() - started
        (self.workdir / "audit").mkdir(exist_ok=True)
        (self.workdir / "audit-log").mkdir(exist_ok=True)
        (self.workdir / "audit" / "policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        config = self.workdir / "kind.yaml"
        config.write_text(yaml.safe_dump(build_cluster_config(image, self.workdir)))
        self.stop_stale()
        created = time.monotonic()
        self._kind(
            "create", "cluster", "--name", self.name, "--config", str(config),
            "--kubeconfig", str(self.kubeconfig), "--retain",
        )  # fmt: skip
        self.timings["create"] = time.monotonic() - created
        inspect = self._docker("inspect", self.node)
        networks = json.loads(inspect)[0]["NetworkSettings"]["Networks"]
        net = networks.get("kind") or next(iter(networks.values()))
        self.node_ip, self.registry_host = net["IPAddress"], net["Gateway"]
        pod_cidr = wait_for(self._pod_cidr, 60, f"{self.node}'s pod CIDR", 0.5)
        cni = build_cni_config(pod_cidr, self.node_ip, self.registry_host)
        self._write_on_node("/etc/cni/net.d/10-agentexec.conflist", json.dumps(cni, indent=2))
        wait_for(self._ready, 120, f"{self.node} Ready", 0.5)
        wait_for(self._default_service_account, 60, "the default ServiceAccount", 0.5)
        for cidr in ROUTED:
            subprocess.run(["ip", "route", "replace", cidr, "via", self.node_ip], check=True)
            self._routes.append(cidr)
        self.timings["start"] = time.monotonic() - started

    def trust_registry(self, address: str) -> None:
        """Let the node's containerd pull `address` (host:port) over HTTP."""
        self._write_on_node(
            f"/etc/containerd/certs.d/{address}/hosts.toml", build_registry_hosts(address)
        )

    def stop(self) -> None:
        while self._routes:
            cidr = self._routes.pop()
            subprocess.run(["ip", "route", "del", cidr, "via", self.node_ip], check=False)
        self._kind("delete", "cluster", "--name", self.name, check=False)

    def stop_stale(self) -> None:
        """A cluster of this name an earlier run left (it was killed)."""
        listed = subprocess.run(
            [str(built_tool("kind")), "get", "clusters"],
            env=self.engine.env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if self.name in listed.stdout.split():
            self._kind("delete", "cluster", "--name", self.name, check=False)

    def leftovers(self) -> list[str]:
        found = []
        if self._docker("ps", "-aq", "--filter", f"label=io.x-k8s.kind.cluster={self.name}"):
            found.append(f"kind cluster {self.name}'s containers")
        for cidr in ROUTED:
            routes = subprocess.run(["ip", "route", "show", cidr], capture_output=True,
                                    text=True, check=False).stdout  # fmt: skip
            if routes.strip():
                found.append(f"route {routes.strip()}")
        return found

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.kubectl(*args, "-o", "json").stdout)
        return data

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(api_client(self.kubeconfig))

    def _pod_cidr(self) -> str | None:
        cidr: str | None = self.core.read_node(self.node).spec.pod_cidr
        if cidr:
            ipaddress.ip_network(cidr)
        return cidr

    def _ready(self) -> bool:
        conditions = self.core.read_node(self.node).status.conditions or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    def _default_service_account(self) -> bool:
        return bool(self.core.read_namespaced_service_account("default", "default"))

    def _write_on_node(self, path: str, text: str) -> None:
        script = f"mkdir -p {Path(path).parent} && cat > {path}"
        subprocess.run(
            ["docker", "exec", "-i", self.node, "sh", "-c", script],
            input=text, env=self.engine.env, text=True, check=True, capture_output=True,
        )  # fmt: skip

    def _docker(self, *args: str) -> str:
        return self.engine.docker(*args).stdout.strip()

    def _kind(self, *args: str, check: bool = True) -> None:
        done = subprocess.run(
            [str(built_tool("kind")), *args], env=self.engine.env, capture_output=True,
            text=True, timeout=600, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            with contextlib.suppress(OSError):
                (self.workdir / "kind.log").write_text(done.stdout + done.stderr)
            raise RuntimeError(f"kind {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
