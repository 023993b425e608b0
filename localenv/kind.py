"""A kind cluster for `make e2e-kind`: the node tier's scenarios on a laptop
with Docker, where kind's node image can be pulled.

It offers what the scenarios use of a cluster (`kubeconfig`, `kubectl`,
`kubectl_json`, `load_image`, `audit_log`), like `localenv.node.Node`, so the
same tests drive both. kind is built from its Go module at KIND_VERSION into
`.cache/bin`; the node image is KIND_NODE_IMAGE, pinned by digest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from localenv.binaries import built_tool, venv_tool, versions


class KindCluster:
    def __init__(
        self, workdir: Path, name: str = "agentexec-e2e", docker_env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.kind = built_tool("kind")
        self.kubectl_path = venv_tool("kubectl")
        self.kubeconfig = workdir / "kubeconfig"
        self.node_image = versions()["KIND_NODE_IMAGE"]
        # The API server runs inside kind's node container: its audit log is not read here.
        self.audit_log: Path | None = None
        self.env = {**os.environ, **(docker_env or {})}
        # kind's nodes are containers on this kernel only on Linux: elsewhere
        # (Docker Desktop's VM) the host cannot see or signal pod processes.
        self.host_sees_containers = sys.platform.startswith("linux")

    def skip_reason(self) -> str | None:
        """Why kind cannot run here, or None. kind needs its node image,
        pulled from a registry."""
        have = subprocess.run(
            ["docker", "image", "inspect", self.node_image],
            capture_output=True,
            env=self.env,
            check=False,
        )
        if have.returncode == 0:
            return None
        pull = subprocess.run(
            ["docker", "pull", self.node_image],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        if pull.returncode != 0:
            last = (pull.stderr.strip().splitlines() or ["no output"])[-1]
            return f"kind's node image {self.node_image} cannot be pulled: {last}"
        return None

    def start(self) -> None:
        self._kind(
            "create", "cluster", "--name", self.name, "--image", self.node_image,
            "--kubeconfig", str(self.kubeconfig), "--wait", "180s",
        )  # fmt: skip

    def stop(self) -> None:
        self._kind("delete", "cluster", "--name", self.name, check=False)

    def load_image(self, tar: Path) -> None:
        self._kind("load", "image-archive", str(tar), "--name", self.name)

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

    def _kind(self, *args: str, check: bool = True) -> None:
        subprocess.run([str(self.kind), *args], env=self.env, check=check, timeout=600)
