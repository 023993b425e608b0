"""`make run`: the operator and a runner beside it, against an embedded cluster
or, when asked, yours.

By default a local control plane (etcd + kube-apiserver) and a Temporal dev
server are started, whatever the kubeconfig says: the script names the
context it leaves alone. Unless AGENTEXEC_PROVIDERS_FILE is set, an
OpenAI-compatible server (localenv.openai_server) is started too, as the chat
agent's provider ``local``. `make run USE_KUBECONFIG=1` (`--use-kubeconfig`)
applies the CRDs to the cluster of the current context and runs the operator
against it, after naming that context, cluster and server. Ctrl-C stops
everything this script started and removes its working directory (it holds
the local cluster's private keys).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentexec.runner.providers import Provider, dump_providers  # noqa: E402
from localenv.binaries import venv_tool  # noqa: E402
from localenv.kube import ControlPlane  # noqa: E402
from localenv.openai_server import MODEL, OpenAIServer  # noqa: E402
from localenv.procs import ManagedProcess, free_port, port_open  # noqa: E402
from localenv.temporal import TemporalDevServer  # noqa: E402


def say(text: str) -> None:
    print(f"make run: {text}", flush=True)


def current_context(kubectl: Path) -> str | None:
    """'context C (cluster K, server S)' of the current kubeconfig, read
    locally (nothing is sent to that cluster), or None without one."""
    view = subprocess.run(
        [str(kubectl), "config", "view", "--minify", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if view.returncode != 0:
        return None
    config = json.loads(view.stdout or "{}")
    context = config.get("current-context")
    if not context:
        return None
    clusters = config.get("clusters") or [{}]
    cluster = clusters[0].get("name", "?")
    server = (clusters[0].get("cluster") or {}).get("server", "?")
    return f"context {context!r} (cluster {cluster!r}, server {server})"


def cluster_reachable(kubectl: Path) -> bool:
    probe = subprocess.run(
        [str(kubectl), "version", "--request-timeout=5s", "-o", "json"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def write_providers(workdir: Path, server: OpenAIServer) -> Path:
    """A providers file naming ``server`` as ``local``, its key in a file as a
    Secret would be mounted."""
    key_file = workdir / "openai" / "apiKey"
    key_file.write_text(server.api_key or "")
    key_file.chmod(0o600)
    path = workdir / "providers.json"
    path.write_text(dump_providers({"local": Provider("local", server.base_url, key_file)}))
    return path


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__)
    parser.add_argument(
        "--use-kubeconfig",
        action="store_true",
        help="run against the current kubeconfig context's cluster (make run USE_KUBECONFIG=1)",
    )
    args = parser.parse_args(argv)
    kubectl = venv_tool("kubectl")
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "text")
    started: list[ControlPlane | TemporalDevServer | OpenAIServer] = []
    context = current_context(kubectl)
    if args.use_kubeconfig:
        if context is None:
            say("--use-kubeconfig: the kubeconfig has no current context")
            return 2
        if not cluster_reachable(kubectl):
            say(f"--use-kubeconfig: {context} does not answer")
            return 2
        if "TEMPORAL_ADDRESS" not in env:
            # An operator there dialling our localhost would mark every
            # execution in that cluster as disconnected.
            say(f"--use-kubeconfig needs TEMPORAL_ADDRESS: the Temporal that {context} uses")
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="agentexec-run-"))
    say(f"working directory {workdir} (removed on exit)")
    # Explicit: a shell that starts us in the background ignores SIGINT.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    operator: ManagedProcess | None = None
    runner: ManagedProcess | None = None
    try:
        if args.use_kubeconfig:
            say(f"using {context}, as asked: applying the CRDs there")
        else:
            if context is not None:
                say(f"not using your kubeconfig's {context}; `make run USE_KUBECONFIG=1` would")
            say("starting a local control plane")
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
        if "AGENTEXEC_PROVIDERS_FILE" not in env:
            # The chat agent's provider: llama.cpp's server with a tiny model.
            chat = OpenAIServer(workdir / "openai", api_key=secrets.token_urlsafe(24))
            say(f"starting an OpenAI-compatible server on {chat.base_url} (model {MODEL!r})")
            started.append(chat)
            chat.start()
            env["AGENTEXEC_PROVIDERS_FILE"] = str(write_providers(workdir, chat))
            # A loopback server: never through the proxy this shell may name
            # (the chat agent honours HTTP(S)_PROXY; lower case wins).
            for name in ("NO_PROXY", "no_proxy"):
                env[name] = ",".join(filter(None, (env.get(name), "127.0.0.1", "localhost")))
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
        # Agents run beside the operator, as in the chart: a runner process
        # with Temporal's settings only (no kubeconfig), its own HTTP port.
        runner_env = {k: v for k, v in env.items() if k != "KUBECONFIG"}
        runner_port = runner_env["AGENTEXEC_HTTP_PORT"] = str(free_port())
        runner = ManagedProcess(
            "runner",
            [str(Path(sys.executable).parent / "agentexec-operator"), "runner"],
            workdir / "runner.log",
            env=runner_env,
        )
        runner.start()
        bin_dir = Path(sys.executable).parent
        print(
            f"""
The operator is running (pid {operator.pid}; log: {operator.log_path};
status: http://127.0.0.1:{http_port}/statusz), and a runner beside it
(pid {runner.pid}; log: {runner.log_path};
status: http://127.0.0.1:{runner_port}/statusz).
In another terminal:

    export KUBECONFIG={env.get("KUBECONFIG", "~/.kube/config")} PATH={bin_dir}:$PATH
    kubectl apply -f {ROOT / "examples" / "echo.yaml"}
    kubectl apply -f {ROOT / "examples" / "chat.yaml"}
    kubectl get aex -w

Ctrl-C stops everything `make run` started.
""",
            flush=True,
        )
        with operator.log_path.open() as log, runner.log_path.open() as runner_log:
            while operator.running and runner.running:
                line = log.readline() or runner_log.readline()
                if line:
                    sys.stdout.write(line)
                else:
                    time.sleep(0.2)
        which = "the operator" if not operator.running else "the runner"
        say(f"{which} exited; see its log above")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        if runner is not None:
            runner.stop(grace=20)
        if operator is not None:
            operator.stop(grace=20)
        for component in reversed(started):
            component.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        say("stopped everything it started")


if __name__ == "__main__":
    sys.exit(main())
