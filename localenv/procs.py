"""Child processes that are always stopped, and the small waits around them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class ProcessExited(RuntimeError):
    """What a process was waited for cannot come: the process exited."""


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
        except ProcessExited:
            raise
        except Exception as exc:  # the last error is what the failure message shows
            result, last = None, exc  # type: ignore[assignment]
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s; last seen: {last!r}")
        time.sleep(interval)


class ManagedProcess:
    """One child process in its own session, logging to a file.

    stop() sends SIGTERM then SIGKILL after `grace`; kill() sends SIGKILL at
    once (the fault the tests inject). Both are idempotent.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {' '.join(self.argv)}\n".encode())
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        self._reap(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the process holds its sockets and answers nothing (a hung server)."""
        self.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.send_signal(signal.SIGCONT)

    def stop(self, grace: float = 10.0) -> None:
        if not self.running:
            self._reap(timeout=0)
            return
        self.thaw()  # a frozen process would not act on SIGTERM
        self.send_signal(signal.SIGTERM)
        if not self._reap(timeout=grace):
            self.send_signal(signal.SIGKILL)
            self._reap(timeout=10)

    def wait_until(
        self, predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1
    ) -> T:
        """wait_for(...) while the process runs, failing with the end of its
        log: at once if it exits (a server that died never gets ready)."""

        def running() -> T:
            code = self.proc.poll() if self.proc is not None else None
            if code is not None:
                raise ProcessExited(f"{self.name} exited with code {code}")
            return predicate()

        try:
            return wait_for(running, timeout, what, interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None
        except ProcessExited as exc:
            raise ProcessExited(f"{what} never came: {exc}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def send_signal(self, sig: signal.Signals) -> None:
        """``sig`` to the process group (nothing if it is not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        # The whole process group: the temporal CLI and kopf may have children.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _reap(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
