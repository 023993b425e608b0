"""An image and chart registry the cluster pulls from: the CNCF distribution
registry (`github.com/distribution/distribution/v3`, built from its Go module
into `.cache/bin` at REGISTRY_VERSION), as a process of its own.

It serves plain HTTP on one address: loopback for the local node (its
containerd treats a loopback registry as plain HTTP), the Docker network's
gateway for kind (whose node containerd is told so, `KindCluster.trust_registry`).
What is pushed keeps its digest: images go as OCI archives (`skopeo copy`,
localenv.release), the chart as an OCI artifact (`helm push`), and the
cluster installs both by digest.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from localenv import release
from localenv.binaries import built_tool
from localenv.procs import ManagedProcess, free_port

MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


@dataclass(frozen=True)
class Pushed:
    """An image in the registry: `repository` (registry/name), `tag`, `digest`."""

    repository: str
    tag: str
    digest: str

    @property
    def ref(self) -> str:
        """Pinned: repository@digest (what pods run)."""
        return f"{self.repository}@{self.digest}"


class Registry:
    def __init__(self, workdir: Path, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port()
        self.proc: ManagedProcess | None = None

    @property
    def address(self) -> str:
        """host:port, as image references and `oci://` chart references name it."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.address},
        }
        path = self.workdir / "config.yml"
        path.write_text(yaml.safe_dump(config))
        self.proc = ManagedProcess(
            "registry", [str(built_tool("registry")), "serve", str(path)], self.workdir / "log"
        )
        self.proc.start()
        self.proc.wait_until(self._answers, 30, f"registry on {self.address}", 0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2) as resp:
            return bool(resp.status == 200)

    def digest(self, name: str, reference: str) -> str:
        """The digest the registry serves `name:reference` under."""
        request = urllib.request.Request(
            f"http://{self.address}/v2/{name}/manifests/{reference}",
            method="HEAD",
            headers={"Accept": MANIFEST_TYPES},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return str(resp.headers["Docker-Content-Digest"])

    def tags(self, name: str) -> list[str]:
        with urllib.request.urlopen(f"http://{self.address}/v2/{name}/tags/list", timeout=10) as r:
            return list(json.load(r).get("tags") or [])

    def push_archive(self, archive: Path, name: str, tag: str) -> Pushed:
        """An OCI archive (localenv.release.save_oci_archive) as name:tag; the
        registry's digest is the archive's, or this fails."""
        release.push_oci_archive(archive, f"{self.address}/{name}:{tag}")
        served = self.digest(name, tag)
        expected = release.archive_digest(archive)
        if served != expected:
            raise RuntimeError(f"{name}:{tag}: registry serves {served}, the archive is {expected}")
        return Pushed(f"{self.address}/{name}", tag, served)

    def tag(self, image: Pushed, tag: str) -> Pushed:
        """The same manifest under another tag (the same digest)."""
        name = image.repository.removeprefix(f"{self.address}/")
        get = urllib.request.Request(
            f"http://{self.address}/v2/{name}/manifests/{image.digest}",
            headers={"Accept": MANIFEST_TYPES},
        )
        with urllib.request.urlopen(get, timeout=10) as resp:
            body, media_type = resp.read(), resp.headers["Content-Type"]
        put = urllib.request.Request(
            f"http://{self.address}/v2/{name}/manifests/{tag}",
            data=body,
            method="PUT",
            headers={"Content-Type": media_type},
        )
        with urllib.request.urlopen(put, timeout=10) as resp:
            digest = str(resp.headers["Docker-Content-Digest"])
        if digest != image.digest:
            raise RuntimeError(f"{name}:{tag} got {digest}, not {image.digest}")
        return Pushed(image.repository, tag, digest)

    def push_chart(self, package: Path, helm: Path | None = None) -> str:
        """`helm push` of a chart package; returns oci://registry/charts/NAME@DIGEST."""
        done = subprocess.run(
            [
                str(helm or built_tool("helm")), "push", str(package),
                f"oci://{self.address}/charts", "--plain-http",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        said = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"helm push {package.name} failed: {said.strip()}")
        pushed = re.search(r"Pushed: (\S+):(\S+)", said)
        digest = re.search(r"Digest: (sha256:[0-9a-f]{64})", said)
        if pushed is None or digest is None:
            raise RuntimeError(f"helm push said no reference and digest: {said.strip()}")
        return f"oci://{pushed.group(1)}@{digest.group(1)}"
