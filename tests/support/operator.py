"""The operator as a real process (the console command), for the e2e tier."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from localenv.procs import ManagedProcess, free_port

# The machine's own proxy settings (a CI host may have some) would route the
# chat agent's calls to the test's loopback providers: tests give their own.
PROXY_VARIABLES = frozenset(
    n for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY") for n in (name, name.lower())
)


def inherited(*drop: str) -> dict[str, str]:
    """This process's environment without our settings, proxies and ``drop``."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "AGENTEXEC_")) and k not in PROXY_VARIABLES
        and k not in drop
    }  # fmt: skip


class OperatorProcess:
    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path,
        temporal_address: str,
        namespace: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.http_port = free_port()
        self.task_queue = f"aex-{namespace}"
        self.runner_queue = f"aex-runner-{namespace}"
        full_env = {
            **inherited(),
            "KUBECONFIG": str(kubeconfig),
            "TEMPORAL_ADDRESS": temporal_address,
            "TEMPORAL_CONNECT_TIMEOUT_SECONDS": "3",
            "TEMPORAL_BACKOFF_MAX_SECONDS": "2",
            "TEMPORAL_CIRCUIT_BACKOFF_MAX_SECONDS": "5",
            "TEMPORAL_WORKER_GRACE_SECONDS": "5",
            "AGENTEXEC_HTTP_PORT": str(self.http_port),
            "AGENTEXEC_WATCH_NAMESPACES": namespace,
            "AGENTEXEC_TASK_QUEUE": self.task_queue,
            "AGENTEXEC_RUNNER_TASK_QUEUE": self.runner_queue,
            # The e2e tests that predate the runner process (#13) expect the
            # operator to run echo itself: the in-process runner stays on here,
            # and the runner tests turn it off and start a RunnerProcess.
            "AGENTEXEC_RUNNER_ENABLED": "true",
            "AGENTEXEC_CONDITION_SYNC_SECONDS": "1",
            # Tests route executions to their own runner queues (the operator's
            # default refuses spec.taskQueue; tests/e2e/test_agents.py turns it off).
            "AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE": "true",
            # Each test's operators elect their leader in the test's namespace;
            # like a pod's name, the identity survives a restart of the process.
            "AGENTEXEC_LEADER_ELECTION_NAMESPACE": namespace,
            "POD_NAME": f"{namespace}-{workdir.name}",
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        # When the operator last answered /readyz after start(): a process
        # that is down writes no status, so "without status for too long"
        # counts from here (tests/e2e/test_chaos.py).
        self.ready_at = 0.0
        self._proc = ManagedProcess(
            "operator",
            [str(Path(sys.executable).parent / "agentexec-operator")],
            workdir / "operator.log",
            env=full_env,
        )

    def start(self, wait: bool = True) -> None:
        self._proc.start()
        if wait:
            self._proc.wait_until(self._ready, 60, "operator /readyz", 0.2)
            self.ready_at = time.time()

    def _ready(self) -> bool:
        try:
            return http_get("127.0.0.1", self.http_port, "/readyz", 1)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def statusz(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(ok_body(self.http_port, "/statusz"))
        return data

    def metrics(self) -> str:
        return ok_body(self.http_port, "/metrics")

    def kill(self) -> None:
        self._proc.kill()

    def stop(self) -> None:
        self._proc.stop(grace=20)

    @property
    def running(self) -> bool:
        return self._proc.running

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def log(self) -> str:
        return self._proc.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return self._proc.log_tail(lines)


class RunnerProcess:
    """`agentexec-operator runner` (or another runner program, ``argv``) as a
    real process: Temporal only, no kubeconfig in its environment."""

    def __init__(
        self,
        workdir: Path,
        temporal_address: str,
        task_queue: str,
        env: Mapping[str, str] | None = None,
        argv: Sequence[str] | None = None,
        name: str = "runner",
    ) -> None:
        self.http_port = free_port()
        self.task_queue = task_queue
        self.name = name
        full_env = {
            **inherited("KUBECONFIG"),
            "TEMPORAL_ADDRESS": temporal_address,
            "TEMPORAL_CONNECT_TIMEOUT_SECONDS": "3",
            "TEMPORAL_BACKOFF_MAX_SECONDS": "2",
            "TEMPORAL_CIRCUIT_BACKOFF_MAX_SECONDS": "5",
            "TEMPORAL_WORKER_GRACE_SECONDS": "5",
            "AGENTEXEC_HTTP_PORT": str(self.http_port),
            "AGENTEXEC_RUNNER_TASK_QUEUES": task_queue,
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "INFO",
            **(env or {}),
        }
        self.environ = full_env
        command = argv or [str(Path(sys.executable).parent / "agentexec-operator"), "runner"]
        self._proc = ManagedProcess(name, command, workdir / f"{name}.log", env=full_env)

    def start(self, wait: bool = True) -> None:
        self._proc.start()
        if wait:
            self._proc.wait_until(self._polling, 60, f"{self.name} polling its queue", 0.2)

    def _polling(self) -> bool:
        try:
            return bool(self.statusz()["temporal"]["workers_running"] >= 1)
        except (OSError, http.client.HTTPException):
            return False

    def statusz(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(ok_body(self.http_port, "/statusz"))
        return data

    def get(self, path: str, timeout: float = 2, host: str = "127.0.0.1") -> tuple[int, str]:
        return http_get(host, self.http_port, path, timeout)

    def check_config(self) -> subprocess.CompletedProcess[str]:
        """`agentexec-operator runner --check-config` in this runner's environment."""
        return self.run_in_pod(["agentexec-operator", "runner", "--check-config"])

    def run_in_pod(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        """``command`` (an agentexec-operator command line, as a pod's exec
        hook has it) with this runner's environment."""
        assert command[0] == "agentexec-operator", command
        return subprocess.run(
            [str(Path(sys.executable).parent / "agentexec-operator"), *command[1:]],
            env=self.environ, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def kill(self) -> None:
        self._proc.kill()

    def terminate(self) -> None:
        """SIGTERM without waiting (stop() waits, then SIGKILLs)."""
        if self._proc.proc is not None and self._proc.running:
            self._proc.proc.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 20) -> None:
        self._proc.stop(grace=grace)

    @property
    def running(self) -> bool:
        return self._proc.running

    @property
    def returncode(self) -> int | None:
        return None if self._proc.proc is None else self._proc.proc.poll()

    def log(self) -> str:
        return self._proc.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return self._proc.log_tail(lines)


def http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    """GET: the status and the body, whatever the status; the connection is
    closed on every path (an unread error response left for the garbage
    collector fails whichever test runs then, on its ResourceWarning)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def ok_body(port: int, path: str) -> str:
    """The body of a GET on loopback that must answer 200 (else an OSError)."""
    status, body = http_get("127.0.0.1", port, path, 2)
    if status != 200:
        raise OSError(f"GET {path} answered {status}: {body[:200]}")
    return body
