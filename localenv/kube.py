"""A real Kubernetes control plane (etcd + kube-apiserver), started like envtest.

Serving certificates, a service-account signing key, RBAC authorization and an
admin client certificate (group system:masters) are generated per run; the
kubeconfig it writes is what the tests, kubectl and the operator use.

By default it is reachable on loopback only and runs no pods; the options
(bind and advertise addresses, ServiceAccount admission, an audit log) serve
a control plane that pods reach through the `kubernetes` Service.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from localenv.binaries import built_tool, venv_tool
from localenv.pki import CertificateAuthority, KeyPair
from localenv.procs import ManagedProcess, free_port


@functools.cache
def api_client(kubeconfig: Path) -> k8s.ApiClient:
    """The official client on a kubeconfig, one per file for the process:
    a call is one HTTP request on a kept-alive connection, where `kubectl`
    spawns a process, reads the kubeconfig and dials anew each time."""
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


class ControlPlane:
    def __init__(
        self,
        workdir: Path,
        *,
        bind_address: str = "127.0.0.1",
        advertise_address: str = "127.0.0.1",
        service_cidr: str = "10.0.0.0/24",
        service_account_admission: bool = False,
        audit_policy: dict[str, Any] | None = None,
    ) -> None:
        """`service_account_admission` needs a kube-controller-manager (the
        token and service-account controllers) before pods can be created;
        with `audit_policy` the API server writes JSON audit events to
        `audit_log`."""
        self.workdir = workdir
        self.bind_address = bind_address
        self.advertise_address = advertise_address
        self.service_cidr = service_cidr
        self.service_account_admission = service_account_admission
        self.audit_policy = audit_policy
        self.audit_log: Path | None = workdir / "audit.log" if audit_policy is not None else None
        workdir.mkdir(parents=True, exist_ok=True)
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.kubectl_path = venv_tool("kubectl")
        self.kubeconfig = workdir / "kubeconfig"
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def service_ip(self) -> str:
        """The `kubernetes` Service's address: the first of the service range."""
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    def start(self) -> None:
        pki = CertificateAuthority(self.workdir / "pki")
        self.pki = pki
        hosts = ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default"]
        hosts += ["kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
        hosts += [self.service_ip]
        if self.advertise_address not in hosts:
            hosts.append(self.advertise_address)
        serving = pki.issue("apiserver", "kube-apiserver", server_hosts=tuple(hosts))
        self.admin = pki.issue("admin", "agentexec-admin", organizations=("system:masters",))
        sa_key, sa_pub = pki.signing_key("service-account")
        self.sa_key = sa_key
        self.ca_path = pki.cert_path
        optional: list[str] = []
        if not self.service_account_admission:
            # No kube-controller-manager runs the token controller here.
            optional.append("--disable-admission-plugins=ServiceAccount")
        if self.audit_policy is not None and self.audit_log is not None:
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(self.audit_policy))
            optional += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
            ]
        self._etcd = ManagedProcess(
            "etcd",
            [
                str(built_tool("etcd")),
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{self.etcd_peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            self.workdir / "etcd.log",
        )
        self._apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(built_tool("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--secure-port={self.port}",
                f"--bind-address={self.bind_address}",
                f"--advertise-address={self.advertise_address}",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.cert_path}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={self.service_cidr}",
                # Node: a kubelet's own credentials (system:node:NAME) reach
                # only its pods' objects. No effect where no kubelet runs.
                "--authorization-mode=Node,RBAC",
                # Logs and exec reach a kubelet as the admin, at its node
                # address (its name is not in any resolver).
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={self.admin.cert}",
                f"--kubelet-client-key={self.admin.key}",
                "--allow-privileged=true",
                *optional,
                "--v=1",
            ],
            self.workdir / "kube-apiserver.log",
        )
        self._etcd.start()
        self.start_apiserver()
        self.write_kubeconfig(self.kubeconfig, self.admin)

    def start_apiserver(self) -> None:
        assert self._apiserver is not None
        self._apiserver.start()
        self._apiserver.wait_until(self._ready, 90, f"kube-apiserver on {self.url}", 0.2)

    def stop_apiserver(self) -> None:
        if self._apiserver is not None:
            self._apiserver.stop(grace=20)

    def stop(self) -> None:
        # The apiserver first: with etcd gone it hangs on SIGTERM for a minute.
        self.stop_apiserver()
        if self._etcd is not None:
            self._etcd.stop()

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return ctx

    def _ready(self) -> bool:
        assert self._apiserver is not None
        if not self._apiserver.running:
            raise RuntimeError(f"kube-apiserver exited:\n{self._apiserver.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"{self.url}/readyz", context=self._ssl_context(), timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:  # 500 while post-start hooks run
            exc.close()
            return False

    def write_kubeconfig(self, path: Path, user: KeyPair) -> Path:
        """A kubeconfig for `user` (a client certificate from `self.pki`)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "agentexec-local",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(user.cert),
                        "client-key": str(user.key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "agentexec-local",
                    "context": {"cluster": "agentexec-local", "user": "admin"},
                }
            ],
            "current-context": "agentexec-local",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    @property
    def api(self) -> k8s.ApiClient:
        """The official client as the admin (kubectl stays for what a test
        is about kubectl itself: explain, printer columns, apply errors)."""
        return api_client(self.kubeconfig)

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def kubectl_json(self, *args: str) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.kubectl(*args, "-o", "json").stdout)
        return data

    def request_counts(self, resource: str) -> dict[str, float]:
        """The API server's own count of requests on ``resource`` (its /metrics),
        by "VERB[/subresource]" and by "code=NNN"."""
        text = self.kubectl("get", "--raw", "/metrics").stdout
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{") or (
                f'resource="{resource}"' not in line
            ):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            value = float(line.rsplit(" ", 1)[1])
            sub = labels.get("subresource")
            verb = labels.get("verb", "?") + (f"/{sub}" if sub else "")
            counts[verb] = counts.get(verb, 0.0) + value
            code = f"code={labels.get('code', '?')}"
            counts[code] = counts.get(code, 0.0) + value
        return counts
