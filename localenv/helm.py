"""helm (built from helm.sh/helm/v3, stamped as its release build) against the
test control plane."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from localenv.binaries import ROOT, built_tool
from localenv.kube import ControlPlane

CHART = ROOT / "charts" / "agentexec-operator"
EVERYTHING_ON = CHART / "ci" / "everything-on-values.yaml"


def helm_binary() -> Path:
    """The stamped helm of hack/versions.env, built on first use (see
    built_tool: an unstamped build of the same version misreads the
    Kubernetes version and fails the chart's kubeVersion check)."""
    return built_tool("helm")


class Helm:
    def __init__(self, plane: ControlPlane, home: Path) -> None:
        self.plane = plane
        self.binary = helm_binary()
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.plane.kubeconfig}", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def template(self, *args: str, check: bool = True) -> str:
        """`helm template` as a user types it: no --kube-version, no cluster."""
        return self.run("template", "rel", str(CHART), *args, check=check).stdout

    def template_result(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("template", "rel", str(CHART), *args, check=False)
