"""What the image runs, proven without a Docker engine: the Dockerfile's
install steps in a fresh virtualenv, then its entrypoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from localenv.binaries import ROOT


def test_entrypoint_from_a_fresh_virtualenv(tmp_path: Path) -> None:
    venv = tmp_path / "agentexec"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The build stage of the Dockerfile: `pip install --no-compile .`
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-compile", str(ROOT)],
        check=True,
        timeout=600,
    )
    entrypoint = venv / "bin" / "agentexec-operator"
    version = subprocess.run([str(entrypoint), "--version"], capture_output=True, text=True)
    assert version.returncode == 0
    assert version.stdout.startswith("agentexec-operator ")
    ok = subprocess.run([str(entrypoint), "--check-config"], capture_output=True, text=True, env={})
    assert ok.stdout.strip() == "configuration ok", ok.stderr
    bad = subprocess.run(
        [str(entrypoint)], capture_output=True, text=True, env={"TEMPORAL_ADDRESS": "nope"}
    )
    assert bad.returncode == 2
    assert "invalid configuration: TEMPORAL_ADDRESS: must be host:port" in bad.stderr
    # The image carries no test or dev tooling.
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True
    ).stdout.lower()
    for dev_only in ("pytest", "ruff", "mypy", "kubernetes-asyncio"):
        assert dev_only not in installed
