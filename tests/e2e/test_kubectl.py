"""What a person or a script sees through kubectl: the printer columns, and
`kubectl wait --for=condition=Completed` (issue #21) for executions that
succeed and that fail, as the README shows it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from localenv.binaries import ROOT, venv_tool
from localenv.kube import ControlPlane
from tests.e2e import aex
from tests.support.operator import OperatorProcess

MakeOperator = Callable[..., OperatorProcess]


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```sh\n(.*?)```", text, re.S)
    assert found, f"README.md has no block marked {marker}"
    return found.group(1)


def kubeconfig_in(plane: ControlPlane, namespace: str, path: Path) -> Path:
    """The control plane's kubeconfig with `namespace` as its current one, as
    a user's context names theirs (the README's commands name none)."""
    config = yaml.safe_load(plane.kubeconfig.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    path.write_text(yaml.safe_dump(config))
    return path


def shell(script: str, kubeconfig: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env={**os.environ, "KUBECONFIG": str(kubeconfig),
             "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_kubectl_wait_for_completed_returns_for_success_and_failure_as_the_readme_says(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator, tmp_path: Path
) -> None:
    make_operator()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").symlink_to(venv_tool("kubectl"))
    kubeconfig = kubeconfig_in(control_plane, namespace, tmp_path / "kubeconfig")

    # The README's recipe, as it is written.
    recipe = readme_block("readme:kubectl-wait")
    ran = await asyncio.to_thread(shell, recipe, kubeconfig, bin_dir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "agentexecution.agentexec.io/hello-echo condition met" in ran.stdout
    assert ran.stdout.rstrip().endswith("Succeeded\nHello from agentexec"), ran.stdout

    # A failing one: the same wait returns (Succeeded alone would not).
    aex.create(control_plane, namespace, "broken", "x", parameters={"fail": "on purpose"})
    waited = await asyncio.to_thread(
        shell, "kubectl wait --for=condition=Completed aex/broken --timeout=60s", kubeconfig,
        bin_dir,
    )  # fmt: skip
    assert waited.returncode == 0, waited.stderr
    failed = aex.get(control_plane, namespace, "broken")
    assert aex.phase(failed) == "Failed", aex.summary(failed)
    assert aex.condition(failed, "Completed")["reason"] == "Failed"
    assert aex.condition(failed, "Succeeded")["status"] == "False"
    not_succeeded = await asyncio.to_thread(
        shell, "kubectl wait --for=condition=Succeeded aex/broken --timeout=2s", kubeconfig,
        bin_dir,
    )  # fmt: skip
    assert not_succeeded.returncode != 0

    # The columns: phase, agent, reason, Temporal, the loop's step (assistants), age
    # (the workflow with -o wide).
    table = control_plane.kubectl("get", "aex", "-n", namespace).stdout.splitlines()
    header = ["NAME", "PHASE", "AGENT", "REASON", "TEMPORAL", "STEP", "AGE"]
    assert table[0].split() == header, table
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["hello-echo"][1:4] == ["Succeeded", "echo", "Succeeded"], rows
    assert rows["broken"][1:4] == ["Failed", "echo", "AgentFailed"], rows
    wide = control_plane.kubectl("get", "aex", "broken", "-n", namespace, "-o", "wide").stdout
    assert "WORKFLOW" in wide.splitlines()[0]
    assert f"agentexec/{namespace}/broken/" in wide
