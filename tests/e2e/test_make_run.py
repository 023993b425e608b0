"""`make run` on a machine with no kubeconfig: a working local cluster, and a
Ctrl-C that leaves no process and no directory behind; with a kubeconfig, the
cluster it names is used only when asked."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from localenv.binaries import ROOT, venv_tool
from localenv.kube import ControlPlane
from localenv.procs import wait_for


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:160]}")
    return found


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def test_make_run_without_kubeconfig(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "TEMPORAL_ADDRESS")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config
    out_path = tmp_path / "run.out"
    with out_path.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, str(ROOT / "hack" / "run_local.py")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        text = wait_for(
            lambda: (t := out_path.read_text()) and "Ctrl-C stops everything" in t and t,
            timeout=180,
            what="make run banner",
            interval=0.5,
        )
        workdir = re.search(r"working directory (\S+)", text).group(1)  # type: ignore[union-attr]
        kubeconfig = re.search(r"export KUBECONFIG=(\S+)", text).group(1)  # type: ignore[union-attr]
        operator_pid = int(re.search(r"pid (\d+)", text).group(1))  # type: ignore[union-attr]
        assert "starting a local control plane" in text

        apply = subprocess.run(
            [str(venv_tool("kubectl")), f"--kubeconfig={kubeconfig}", "apply",
             "-f", str(ROOT / "examples" / "echo.yaml")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert apply.returncode == 0, apply.stderr
        assert "agentexecution.agentexec.io/hello-echo created" in apply.stdout
        assert processes_mentioning(workdir), "the local components should be running"
        # The operator runs no agents itself: the runner beside it runs echo.
        runner_pid = int(re.search(r"a runner beside it\s+\(pid (\d+)", text).group(1))  # type: ignore[union-attr]
        wait_for(
            lambda: subprocess.run(
                [str(venv_tool("kubectl")), f"--kubeconfig={kubeconfig}", "get", "aex",
                 "hello-echo", "-o", "jsonpath={.status.phase}"],
                capture_output=True, text=True, check=False,
            ).stdout == "Succeeded",
            timeout=60,
            what="hello-echo Succeeded",
            interval=0.5,
        )  # fmt: skip

        # The chat example reaches the OpenAI-compatible server make run
        # started, and the operator records the tokens it used.
        kubectl = [str(venv_tool("kubectl")), f"--kubeconfig={kubeconfig}"]
        subprocess.run([*kubectl, "apply", "-f", str(ROOT / "examples" / "chat.yaml")], check=True)

        def chat_status() -> dict[str, Any] | None:
            got = subprocess.run(
                [*kubectl, "get", "aex", "hello-chat", "-o", "json"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            status: dict[str, Any] = json.loads(got.stdout or "{}").get("status", {})
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_for(chat_status, timeout=60, what="hello-chat finished", interval=0.5)
        assert status["phase"] == "Succeeded", status
        assert status["output"], status
        assert status["usage"]["completionTokens"] == 16, status  # its maxTokens
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(timeout=90)

    assert run.returncode == 0, out_path.read_text()
    assert "stopped everything it started" in out_path.read_text()
    assert not pid_alive(operator_pid)
    assert not pid_alive(runner_pid)
    assert processes_mentioning(workdir) == []
    # It held the local cluster's private keys.
    assert not Path(workdir).exists()


def test_make_run_leaves_the_kubeconfigs_cluster_alone_unless_asked(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    """A kubeconfig that reaches a cluster is named and not used; only
    --use-kubeconfig (make run USE_KUBECONFIG=1) uses it, and then it needs
    the Temporal that cluster uses."""
    kube = tmp_path / ".kube"
    kube.mkdir()
    (kube / "config").write_text(control_plane.kubeconfig.read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "TEMPORAL_ADDRESS")}
    env["HOME"] = str(tmp_path)
    server = control_plane.url

    asked = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "run_local.py"), "--use-kubeconfig"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert asked.returncode == 2
    assert "--use-kubeconfig needs TEMPORAL_ADDRESS" in asked.stdout
    assert f"context 'agentexec-local' (cluster 'agentexec-local', server {server})" in asked.stdout

    out_path = tmp_path / "run.out"
    with out_path.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, str(ROOT / "hack" / "run_local.py")],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        text = wait_for(
            lambda: (t := out_path.read_text()) and "starting a local control plane" in t and t,
            timeout=60,
            what="make run choosing its cluster",
            interval=0.2,
        )
        assert "not using your kubeconfig's context 'agentexec-local'" in text
        assert server in text
        workdir = re.search(r"working directory (\S+)", text).group(1)  # type: ignore[union-attr]
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(timeout=90)
    assert run.returncode == 0, out_path.read_text()
    assert not Path(workdir).exists()
