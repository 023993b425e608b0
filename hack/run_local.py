"""`make run`: the operator against your cluster, or against an embedded one.

With a reachable cluster in the current kubeconfig, the CRDs are applied there
and the operator runs against it and the Temporal named by TEMPORAL_ADDRESS.
Without one, a local control plane (etcd + kube-apiserver) and a Temporal dev
server are started first. Ctrl-C stops everything this script started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.binaries import venv_tool  # noqa: E402
from tests.support.kube import ControlPlane  # noqa: E402
from tests.support.procs import ManagedProcess, free_port, port_open  # noqa: E402
from tests.support.temporal import TemporalDevServer  # noqa: E402


def say(text: str) -> None:
    print(f"make run: {text}", flush=True)


def cluster_reachable(kubectl: Path) -> bool:
    if not (os.environ.get("KUBECONFIG") or Path.home().joinpath(".kube", "config").exists()):
        return False
    probe = subprocess.run(
        [str(kubectl), "version", "--request-timeout=5s", "-o", "json"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    kubectl = venv_tool("kubectl")
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "text")
    started: list[ControlPlane | TemporalDevServer] = []
    workdir = Path(tempfile.mkdtemp(prefix="agentexec-run-"))
    say(f"working directory {workdir}")
    # Explicit: a shell that starts us in the background ignores SIGINT.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    operator: ManagedProcess | None = None
    try:
        if cluster_reachable(kubectl):
            say("using the cluster in your current kubeconfig")
        else:
            say("no reachable cluster in your kubeconfig: starting a local control plane")
            plane = ControlPlane(workdir / "kube")
            started.append(plane)
            plane.start()
            env["KUBECONFIG"] = str(plane.kubeconfig)
            if "TEMPORAL_ADDRESS" not in env:
                port = 7233 if not port_open(7233) else free_port()
                temporal = TemporalDevServer(workdir / "temporal", port=port)
                say(f"starting a Temporal dev server on {temporal.address}")
                started.append(temporal)
                temporal.start()
                env["TEMPORAL_ADDRESS"] = temporal.address
        subprocess.run(
            [str(kubectl), "apply", "--server-side", "-f", str(ROOT / "crds")], env=env, check=True
        )
        http_port = env.setdefault("AGENTEXEC_HTTP_PORT", str(free_port()))
        operator = ManagedProcess(
            "operator",
            [str(Path(sys.executable).parent / "agentexec-operator")],
            workdir / "operator.log",
            env=env,
        )
        operator.start()
        bin_dir = Path(sys.executable).parent
        print(
            f"""
The operator is running (pid {operator.pid}; log: {operator.log_path};
status: http://127.0.0.1:{http_port}/statusz).
In another terminal:

    export KUBECONFIG={env.get("KUBECONFIG", "~/.kube/config")} PATH={bin_dir}:$PATH
    kubectl apply -f {ROOT / "examples" / "echo.yaml"}
    kubectl get aex -w

Ctrl-C stops everything `make run` started.
""",
            flush=True,
        )
        with operator.log_path.open() as log:
            while operator.running:
                line = log.readline()
                if line:
                    sys.stdout.write(line)
                else:
                    time.sleep(0.2)
        say("the operator exited; see its log above")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        if operator is not None:
            operator.stop(grace=20)
        for component in reversed(started):
            component.stop()
        say("stopped everything it started")


if __name__ == "__main__":
    sys.exit(main())
