"""helm (built from helm.sh/helm/v3) against the test control plane."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.binaries import ROOT, built_tool, versions
from tests.support.kube import ControlPlane

CHART = ROOT / "charts" / "agentexec-operator"
EVERYTHING_ON = CHART / "ci" / "everything-on-values.yaml"


class Helm:
    def __init__(self, plane: ControlPlane, home: Path) -> None:
        self.plane = plane
        self.binary = built_tool("helm")
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.plane.kubeconfig}", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    def template(self, *args: str) -> str:
        kube = versions()["KUBE_VERSION"].lstrip("v")
        return self.run("template", "rel", str(CHART), f"--kube-version={kube}", *args).stdout
