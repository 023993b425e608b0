"""A real Kubernetes control plane (etcd + kube-apiserver), started like envtest.

Serving certificates, a service-account signing key, RBAC authorization and an
admin client certificate (group system:masters) are generated per run; the
kubeconfig it writes is what the tests, kubectl and the operator use.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from localenv.binaries import built_tool, venv_tool
from localenv.pki import CertificateAuthority
from localenv.procs import ManagedProcess, free_port, wait_for


class ControlPlane:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
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

    def start(self) -> None:
        pki = CertificateAuthority(self.workdir / "pki")
        serving = pki.issue(
            "apiserver",
            "kube-apiserver",
            server_hosts=("127.0.0.1", "localhost", "kubernetes.default.svc"),
        )
        self.admin = pki.issue("admin", "agentexec-admin", organizations=("system:masters",))
        sa_key, sa_pub = pki.signing_key("service-account")
        self.ca_path = pki.cert_path
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
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--cert-dir={self.workdir / 'certs'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.cert_path}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                # No kube-controller-manager runs the token controller here.
                "--disable-admission-plugins=ServiceAccount",
                "--v=1",
            ],
            self.workdir / "kube-apiserver.log",
        )
        self._etcd.start()
        self.start_apiserver()
        self._write_kubeconfig()

    def start_apiserver(self) -> None:
        assert self._apiserver is not None
        self._apiserver.start()
        try:
            wait_for(self._ready, 90, f"kube-apiserver on {self.url}", 0.2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self._apiserver.log_tail()}") from None

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

    def _write_kubeconfig(self) -> None:
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
                        "client-certificate": str(self.admin.cert),
                        "client-key": str(self.admin.key),
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
        self.kubeconfig.write_text(yaml.safe_dump(config))

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
