"""A single-node Kubernetes cluster of real processes on this machine.

etcd and kube-apiserver (localenv.kube.ControlPlane, bound to all addresses,
advertising the host's address), kube-controller-manager, kube-scheduler, a
containerd of its own (Debian's binary, CRI on), a CNI bridge, a kubelet,
kube-proxy in iptables mode and CoreDNS as a process on the bridge's gateway.
It needs root; `Node.skip_reason()` says why it cannot run elsewhere.

Five traps measured on these machines, each answered by a setting here: no
CAP_SYS_RESOURCE, so runc cannot set a negative oom_score_adj (containerd's
restrict_oom_score_adj); kubelet 1.36 refuses cgroup v1 (failCgroupV1: false,
cgroupfs); in-cluster clients dial kubernetes.default.svc (CoreDNS, clusterDNS);
Docker sets the FORWARD policy to DROP (ACCEPT rules for the bridge); no
registry can be reached (the project runs its own, localenv.registry, on
loopback, which containerd reaches over plain HTTP; only the sandbox image is
imported before the kubelet starts).

Pods talk only to the node, the API server and each other: CoreDNS serves
cluster.local only and forwards nothing, and pods get no search domains or
name servers from the host.

`stop()` leaves the machine as it found it: no process, mount, network
namespace, bridge, FORWARD rule, KUBE-*/CNI-* chain or pod cgroup. It is
idempotent and safe after a failed `start()`; `leftovers()` lists what would
show it did not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from localenv.binaries import ROOT, built_tool
from localenv.kube import ControlPlane
from localenv.pki import KeyPair
from localenv.procs import ManagedProcess, free_port, wait_for

if TYPE_CHECKING:
    from localenv.docker import DockerEngine

NODE_NAME = "agentexec-node"
BRIDGE = "aexnode0"
# Clear of Docker's 172.17.0.0/16 and of containerd's and podman's 10.88/16.
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DOMAIN = "cluster.local"
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
IPTABLES = ("iptables", "ip6tables")
# Chains the kubelet, kube-proxy and the CNI plugins create.
CHAIN_PREFIXES = ("KUBE-", "CNI-")
# Directories outside the workdir that the kubelet (whatever its root dir),
# the CNI plugins and containerd's CRI create when missing; stop() removes
# them when they were not there before start(): the trees, and the others
# only when empty (the network namespaces' directory).
HOST_TREES = (
    Path("/var/lib/cni"),
    Path("/var/log/containers"),
    Path("/var/log/pods"),
    Path("/var/lib/kubelet"),  # device-plugins/kubelet.sock, a fixed path
    Path("/usr/libexec/kubernetes"),  # flexvolume's default, made at start
)
HOST_DIRS = (*HOST_TREES, NETNS_DIR)
# Shared with any other containerd 1.6 (a Docker engine's): shim sockets.
# Removed only if made during the run and empty; never reported.
SHARED_DIRS = (Path("/run/containerd/s"), Path("/run/containerd"))

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

COREDNS_RBAC = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "agentexec:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "agentexec:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "agentexec:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "agentexec:coredns"}
"""


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def _ok(*argv: str) -> bool:
    return _run(*argv, check=False).returncode == 0


def host_address() -> str | None:
    """The host's primary IPv4 address (that of the default route's device),
    which the API server advertises; read from the routing table, no traffic."""
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        routes = json.loads(_run("ip", "-j", "-4", "route", "show", "default").stdout or "[]")
        devs = [r["dev"] for r in routes if "dev" in r]
        addrs = json.loads(_run("ip", "-j", "-4", "addr", "show").stdout or "[]")
        found = [
            (link["ifname"], info["local"])
            for link in addrs
            for info in link.get("addr_info", [])
            if info.get("scope") == "global"
        ]
        for dev in devs:
            for name, addr in found:
                if name == dev:
                    return str(addr)
        if found:
            return str(found[0][1])
    return None


def dns_query(server: str, name: str, timeout: float = 1.0) -> list[str]:
    """The A records `server` answers for `name` (one UDP query)."""
    ident = random.randrange(1 << 16)
    query = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (server, 53))
        data = sock.recv(4096)
    _, flags, qdcount, ancount = struct.unpack(">HHHH", data[:8])
    if flags & 0x000F:
        raise LookupError(f"{name}: DNS rcode {flags & 0x000F}")
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(data, pos) + 4
    found = []
    for _ in range(ancount):
        pos = _skip_name(data, pos)
        rtype, _cls, _ttl, length = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += length
    return found


def _skip_name(data: bytes, pos: int) -> int:
    while data[pos]:
        if data[pos] & 0xC0 == 0xC0:
            return pos + 2
        pos += data[pos] + 1
    return pos + 1


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    return "?"


class Node:
    """One node: control plane, kubelet on containerd, kube-proxy, CoreDNS.

    `sandbox_image` is the pod sandbox ("pause") image's tag; `preload` are
    image tars (docker-save or OCI) imported into containerd before the
    kubelet starts, the sandbox image's among them. Every file it writes is
    under `workdir`.
    """

    def __init__(self, workdir: Path, sandbox_image: str, preload: Sequence[Path] = ()) -> None:
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sandbox_image = sandbox_image
        self.preload = list(preload)
        self.host_ip = host_address() or "127.0.0.1"
        pods = ipaddress.ip_network(POD_CIDR)
        self.gateway = str(next(pods.hosts()))
        self.dns_ip = self.gateway
        self.plane = ControlPlane(
            self.workdir / "kube",
            bind_address="0.0.0.0",  # pods reach it through the kubernetes Service
            advertise_address=self.host_ip,
            service_cidr=SERVICE_CIDR,
            service_account_admission=True,
            audit_policy=AUDIT_POLICY,
        )
        self.containerd_dir = self.workdir / "containerd"
        self.containerd_socket = self.containerd_dir / "containerd.sock"
        if len(str(self.containerd_socket)) > 100:
            raise ValueError(f"workdir too long for a unix socket: {self.containerd_socket}")
        self.kubelet_dir = self.workdir / "kubelet"
        # Where a registry this node pulls from listens: loopback, which
        # containerd's CRI reaches over plain HTTP without configuration.
        self.registry_host = "127.0.0.1"
        # Seconds: "binaries" (built on first use), "node_ready" and "start"
        # (both from after the binaries, "start" up to DNS and ServiceAccount).
        self.timings: dict[str, float] = {}
        self._procs: dict[str, ManagedProcess] = {}
        self._netns_before: set[str] = set()
        self._host_dirs_before = {d for d in (*HOST_DIRS, *SHARED_DIRS) if d.exists()}
        self._started = False

    @classmethod
    def with_images(cls, workdir: Path, engine: DockerEngine, tags: Sequence[str] = ()) -> Node:
        """A node whose containerd gets, before the kubelet starts, the pause
        image and `tags` from `engine` (built there already; docker save)."""
        from localenv import images  # imported when used: the module needs Docker

        sandbox = images.pause_image(engine)
        tars = [images.save(engine, tag, workdir / "images") for tag in (sandbox, *tags)]
        return cls(workdir, sandbox_image=sandbox, preload=tars)

    # -- what the tests use -------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def audit_log(self) -> Path:
        assert self.plane.audit_log is not None
        return self.plane.audit_log

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl(*args, stdin=stdin, check=check, timeout=timeout)

    def kubectl_json(self, *args: str) -> dict[str, object]:
        return self.plane.kubectl_json(*args)

    def trust_registry(self, address: str) -> None:
        """Nothing to do: a loopback registry is plain HTTP to containerd."""
        if not address.startswith(("127.", "localhost:")):
            raise ValueError(f"{address}: the node pulls from a loopback registry only")

    def load_image(self, tar: Path) -> None:
        """Import an image tar into the node's containerd (namespace k8s.io)."""
        from localenv import images  # imported when used: the module needs Docker

        images.import_into_containerd(tar, str(self.containerd_socket), namespace="k8s.io")

    @staticmethod
    def skip_reason() -> str | None:
        """Why a node cannot run here, or None. Installs the host packages
        (hack/host-packages.sh) first where it can."""
        if os.geteuid() != 0:
            return "the node tier needs root (kubelet, containerd, iptables, mounts)"
        if not (CGROUP_ROOT / "cgroup.controllers").exists() and not all(
            (CGROUP_ROOT / c).is_dir() for c in ("cpu", "memory", "pids")
        ):
            return f"no cgroup file system with cpu, memory and pids at {CGROUP_ROOT}"
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "no overlay file system (containerd's snapshotter)"
        packages = _run("bash", str(ROOT / "hack" / "host-packages.sh"), check=False, timeout=600)
        missing = [
            tool
            for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip")
            if shutil.which(tool) is None
        ]
        missing += [
            str(p) for p in (CNI_BIN_DIR / "bridge", CNI_BIN_DIR / "host-local") if not p.exists()
        ]
        if missing:
            said = (packages.stdout + packages.stderr).strip()
            return f"host packages missing ({', '.join(missing)}): {said}"
        if host_address() is None:
            return "no global IPv4 address for the API server to advertise"
        return None

    # -- start --------------------------------------------------------------

    def start(self) -> None:
        """Start everything and wait until the node is Ready, CoreDNS answers
        and the default ServiceAccount exists. On failure call stop()."""
        if leftovers := self._host_leftovers():
            raise RuntimeError(
                "a node is running here or one left this behind; stop it first:\n  "
                + "\n  ".join(leftovers)
            )
        self._started = True
        t0 = time.monotonic()
        binaries = {
            name: built_tool(name)
            for name in (
                "kubelet",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
                "coredns",
            )
        }
        t1 = time.monotonic()
        self.timings["binaries"] = t1 - t0
        self._netns_before = set(os.listdir(NETNS_DIR)) if NETNS_DIR.exists() else set()
        self._create_bridge()
        self.plane.start()
        self._components_config()
        self._spawn("kube-controller-manager", self._controller_manager_argv(binaries))
        self._spawn("kube-scheduler", self._scheduler_argv(binaries))
        self._spawn("containerd", ["containerd", "--config", str(self._containerd_config())])
        self._spawn("kube-proxy", self._kube_proxy_argv(binaries))
        self._spawn("coredns", self._coredns_argv(binaries))
        self._wait(
            "containerd", lambda: _ok("ctr", "-a", str(self.containerd_socket), "version"), 30
        )
        for tar in self.preload:
            self.load_image(tar)
        self._spawn("kubelet", self._kubelet_argv(binaries))
        self._wait("kubelet", self._node_ready, 90)
        self.timings["node_ready"] = time.monotonic() - t1
        self._wait("coredns", self._dns_answers, 60)
        self._wait("kube-controller-manager", self._default_service_account, 60)
        self.timings["start"] = time.monotonic() - t1

    def _spawn(self, name: str, argv: list[str]) -> None:
        proc = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log")
        self._procs[name] = proc
        proc.start()

    def _wait(self, name: str, predicate: Callable[[], bool], timeout: float) -> None:
        """Poll `predicate`; fail at once, with its log, if `name` exits."""
        proc = self._procs[name]
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            if not proc.running:
                raise RuntimeError(f"{name} exited\n--- {proc.log_path}:\n{proc.log_tail()}")
            try:
                if predicate():
                    return
            except Exception as exc:  # the last error is what the failure shows
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{name} not ready after {timeout:.0f}s; last seen: {last!r}\n"
                    f"--- {proc.log_path}:\n{proc.log_tail()}"
                )
            time.sleep(0.2)

    def _create_bridge(self) -> None:
        # Made here, not by the bridge plugin at the first pod, so CoreDNS can
        # bind to its gateway address before any pod exists.
        prefix = ipaddress.ip_network(POD_CIDR).prefixlen
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # Docker sets the FORWARD policy to DROP; bridged pod traffic passes it.
        for direction in ("-i", "-o"):
            _run("iptables", "-I", "FORWARD", "1", direction, BRIDGE, "-j", "ACCEPT")

    def _components_config(self) -> None:
        plane, pki = self.plane, self.plane.pki
        conf = self.workdir / "conf"
        conf.mkdir(exist_ok=True)

        def user(name: str, cn: str, orgs: tuple[str, ...] = ()) -> Path:
            pair = pki.issue(name, cn, organizations=orgs)
            return plane.write_kubeconfig(conf / f"{name}.kubeconfig", pair)

        self._kubeconfigs = {
            "kubelet": user("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",)),
            "kube-controller-manager": user("controller-manager", "system:kube-controller-manager"),
            "kube-scheduler": user("scheduler", "system:kube-scheduler"),
            "kube-proxy": user("kube-proxy", "system:kube-proxy"),
            "coredns": user("coredns", "agentexec:coredns"),
        }
        self._kubelet_serving: KeyPair = pki.issue(
            "kubelet-serving",
            NODE_NAME,
            server_hosts=(self.host_ip, NODE_NAME, "127.0.0.1"),
        )
        self.kubectl("apply", "-f", "-", stdin=COREDNS_RBAC)

    def _controller_manager_argv(self, bins: dict[str, Path]) -> list[str]:
        kubeconfig = self._kubeconfigs["kube-controller-manager"]
        return [
            str(bins["kube-controller-manager"]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--service-account-private-key-file={self.plane.sa_key}",
            f"--root-ca-file={self.plane.ca_path}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--v=1",
        ]

    def _scheduler_argv(self, bins: dict[str, Path]) -> list[str]:
        kubeconfig = self._kubeconfigs["kube-scheduler"]
        return [
            str(bins["kube-scheduler"]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--v=1",
        ]

    def _containerd_config(self) -> Path:
        d = self.containerd_dir
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""\
version = 2
root = "{d / "root"}"
state = "{d / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{d / "containerd.sock.ttrpc"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "opt"}"
[{cri}]
  sandbox_image = "{self.sandbox_image}"
  # No CAP_SYS_RESOURCE here: runc cannot set a negative oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{d / "runc"}"
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{self._cni_conf_dir()}"
  max_conf_num = 1
"""
        path = d / "config.toml"
        d.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _cni_conf_dir(self) -> Path:
        conf_dir = self.workdir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "agentexec-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # pods talk only to the node and each other
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": self.gateway}]],
                        # No default route: besides each other, pods reach
                        # the Services and the node's own address, nothing else.
                        "routes": [{"dst": SERVICE_CIDR}, {"dst": f"{self.host_ip}/32"}],
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        # containerd's CRI adds the loopback plugin to every sandbox itself.
        (conf_dir / "10-agentexec.conflist").write_text(json.dumps(conflist, indent=2))
        return conf_dir

    def _kube_proxy_argv(self, bins: dict[str, Path]) -> list[str]:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self._kubeconfigs["kube-proxy"])},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_CIDR,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # No sysctl writes: leave the host's conntrack and route_localnet alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False},
        }
        path = self.workdir / "conf" / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        return [str(bins["kube-proxy"]), f"--config={path}", "--v=1"]

    def _coredns_argv(self, bins: dict[str, Path]) -> list[str]:
        # Only the cluster zone, no forward plugin: pods resolve nothing else.
        corefile = f"""\
{CLUSTER_DOMAIN}:53 {{
    bind {self.dns_ip}
    errors
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {self._kubeconfigs["coredns"]}
        pods insecure
    }}
    cache 5
}}
"""
        path = self.workdir / "conf" / "Corefile"
        path.write_text(corefile)
        return [str(bins["coredns"]), "-conf", str(path)]

    def _kubelet_argv(self, bins: dict[str, Path]) -> list[str]:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        resolv = self.workdir / "conf" / "resolv.conf"
        resolv.write_text("")  # no search domains or name servers from the host
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.plane.ca_path)},
            },
            "authorization": {"mode": "Webhook"},
            "address": self.host_ip,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "tlsCertFile": str(self._kubelet_serving.cert),
            "tlsPrivateKeyFile": str(self._kubelet_serving.key),
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            # cgroup v1 and no systemd here (trap 2).
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "enforceNodeAllocatable": [],
            # On (the default): the node reports ephemeral-storage, which
            # the chart's pods request. The notes' recipe turned it off, and
            # no pod that requests ephemeral storage could be scheduled.
            "localStorageCapacityIsolation": True,
            "clusterDNS": [self.dns_ip],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "podCIDR": POD_CIDR,
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.workdir / "volume-plugins"),
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
        }
        path = self.workdir / "conf" / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        return [
            str(bins["kubelet"]),
            f"--config={path}",
            f"--kubeconfig={self._kubeconfigs['kubelet']}",
            f"--root-dir={self.kubelet_dir}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={self.host_ip}",
            "--v=1",
        ]

    def _node_ready(self) -> bool:
        result = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _dns_answers(self) -> bool:
        name = f"kubernetes.default.svc.{CLUSTER_DOMAIN}"
        return dns_query(self.dns_ip, name) == [self.plane.service_ip]

    def _default_service_account(self) -> bool:
        sa = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        ca = self.kubectl("get", "configmap", "kube-root-ca.crt", "-n", "default", check=False)
        return sa.returncode == 0 and ca.returncode == 0

    # -- stop ---------------------------------------------------------------

    def stop(self) -> None:
        """Tear down in the order that leaves nothing behind (see the module
        docstring); idempotent, and every step runs even if one fails."""
        if not self._started:
            return
        steps = [
            self._drain_pods,
            lambda: self._stop_proc("kubelet"),
            self._stop_kube_proxy,
            lambda: self._stop_proc("kube-controller-manager"),
            lambda: self._stop_proc("kube-scheduler"),
            lambda: self._stop_proc("coredns"),
            self.plane.stop,
            self._kill_pod_processes,
            lambda: self._stop_proc("containerd"),
            self._kill_strays,
            self._unmount,
            self._remove_network,
            self._remove_cgroups,
            self._remove_host_dirs,
        ]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:  # the remaining steps still run
                errors.append(f"{getattr(step, '__name__', step)}: {exc!r}")
        self._started = False
        if errors:
            raise RuntimeError("node teardown: " + "; ".join(errors))

    def _stop_proc(self, name: str, grace: float = 10) -> None:
        if (proc := self._procs.get(name)) is not None:
            proc.stop(grace=grace)

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args, check=False)

    def _tasks(self) -> list[str]:
        if not self.containerd_socket.exists():
            return []
        return self._ctr("tasks", "ls", "-q").stdout.split()

    def _drain_pods(self) -> None:
        """Delete every pod while the kubelet and CRI can still tear down
        their sandboxes (netns, veth, IP) properly."""
        kubelet, containerd = self._procs.get("kubelet"), self._procs.get("containerd")
        if not (kubelet and kubelet.running and containerd and containerd.running):
            return
        if self.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode != 0:
            return
        workloads = "deployments,statefulsets,daemonsets,replicasets,jobs"
        self.kubectl("delete", workloads, "--all", "-A", "--wait=false", check=False)
        self.kubectl(
            "delete", "pods", "--all", "-A", "--grace-period=5", "--timeout=60s",
            check=False, timeout=90,
        )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not self._tasks(), 30, "containerd tasks gone", 0.5)

    def _stop_kube_proxy(self) -> None:
        self._stop_proc("kube-proxy")
        if (proc := self._procs.get("kube-proxy")) is not None:
            _run(proc.argv[0], "--cleanup", check=False)

    def _kill_pod_processes(self) -> None:
        """Whatever the drain left: kill the tasks through containerd, then
        any process still in a pod cgroup."""
        for task in self._tasks():
            self._ctr("tasks", "kill", "-a", "-s", "SIGKILL", task)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not self._tasks() or self._delete_tasks(), 10, "tasks deleted", 0.5)
        for pid in self._pod_cgroup_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _delete_tasks(self) -> bool:
        for task in self._tasks():
            self._ctr("tasks", "delete", "-f", task)
        return not self._tasks()

    def _kill_strays(self) -> None:
        """Processes naming the workdir (containerd shims among them) that
        outlived their parents."""
        for pid in self._workdir_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not self._workdir_pids(), 10, "stray processes gone", 0.2)

    def _unmount(self) -> None:
        for mount in self._mounts():
            if _run("umount", mount, check=False).returncode != 0:
                _run("umount", "-l", mount, check=False)
        for ns in self._new_netns():
            path = NETNS_DIR / ns
            _run("umount", str(path), check=False)
            with contextlib.suppress(OSError):
                path.unlink()

    def _remove_network(self) -> None:
        if _ok("ip", "link", "show", BRIDGE):
            _run("ip", "link", "delete", BRIDGE)
        for direction in ("-i", "-o"):
            while _ok("iptables", "-D", "FORWARD", direction, BRIDGE, "-j", "ACCEPT"):
                pass
        for tool in IPTABLES:
            for table in ("filter", "nat", "mangle"):
                self._remove_chains(tool, table)

    @staticmethod
    def _chains(tool: str, table: str) -> tuple[list[str], list[list[str]]]:
        """(our chains, the rules in the table that jump to them)."""
        if shutil.which(tool) is None:
            return [], []
        lines = _run(tool, "-w", "-t", table, "-S", check=False).stdout.splitlines()
        chains = [
            line.split()[1]
            for line in lines
            if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES)
        ]
        jumps = []
        for line in lines:
            words = shlex.split(line)
            if words[0] != "-A" or words[1] in chains:
                continue  # our own chains are flushed whole
            targets = {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g")}
            if targets & set(chains):
                jumps.append(words)
        return chains, jumps

    def _remove_chains(self, tool: str, table: str) -> None:
        chains, jumps = self._chains(tool, table)
        for rule in jumps:
            _run(tool, "-w", "-t", table, "-D", *rule[1:], check=False)
        for chain in chains:
            _run(tool, "-w", "-t", table, "-F", chain, check=False)
        for chain in chains:
            _run(tool, "-w", "-t", table, "-X", chain, check=False)

    def _remove_cgroups(self) -> None:
        # The kubelet's cgroupfs driver makes /kubepods in every hierarchy.
        for top in self._pod_cgroups():
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    def _remove_host_dirs(self) -> None:
        for path in HOST_TREES:
            if path not in self._host_dirs_before and path.exists():
                shutil.rmtree(path, ignore_errors=True)
        for path in (NETNS_DIR, *SHARED_DIRS):
            if path not in self._host_dirs_before:
                with contextlib.suppress(OSError):
                    path.rmdir()

    # -- what is left -------------------------------------------------------

    def _workdir_pids(self) -> list[int]:
        needle = str(self.workdir).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
        return pids

    @staticmethod
    def _pod_cgroups() -> list[Path]:
        return [p for p in CGROUP_ROOT.glob("*/kubepods") if p.is_dir()] + [
            p for p in [CGROUP_ROOT / "kubepods"] if p.is_dir()
        ]

    def _pod_cgroup_pids(self) -> list[int]:
        pids: set[int] = set()
        for top in self._pod_cgroups():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    def _mounts(self) -> list[str]:
        """Mount points under the workdir, deepest first."""
        prefix = str(self.workdir)
        points = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
        return sorted(points, key=len, reverse=True)

    def _new_netns(self) -> list[str]:
        if not NETNS_DIR.exists():
            return []
        return sorted(set(os.listdir(NETNS_DIR)) - self._netns_before)

    @classmethod
    def _host_leftovers(cls) -> list[str]:
        """What any node leaves on the host (not tied to one workdir)."""
        found = []
        if _ok("ip", "link", "show", BRIDGE):
            found.append(f"bridge {BRIDGE}")
        forward = _run("iptables", "-w", "-S", "FORWARD", check=False).stdout
        found += [f"iptables rule {r!r}" for r in forward.splitlines() if BRIDGE in r]
        for tool in IPTABLES:
            for table in ("filter", "nat", "mangle"):
                chains, _ = cls._chains(tool, table)
                found += [f"{tool} -t {table} chain {c}" for c in chains]
        found += [f"cgroup {p}" for p in cls._pod_cgroups()]
        return found

    def leftovers(self) -> list[str]:
        """Everything this node's stop() should have removed and did not."""
        found = self._host_leftovers()
        found += [f"process {pid}: {_cmdline(pid)}" for pid in self._workdir_pids()]
        found += [f"process {p.name} (pid {p.pid})" for p in self._procs.values() if p.running]
        found += [f"mount {m}" for m in self._mounts()]
        found += [f"netns {NETNS_DIR / ns}" for ns in self._new_netns()]
        found += [
            f"directory {d}" for d in HOST_DIRS if d not in self._host_dirs_before and d.exists()
        ]
        return found
