"""A Docker engine for image builds: one that already answers, or our own.

`DockerEngine.ensure()` uses an engine that answers `docker info` (the
system's, or one this project started from another checkout: they share
`.cache/docker`), otherwise starts `dockerd` itself with everything under the
cache: data root `.cache/docker` (built images survive between runs, so warm
builds are cache hits) and socket, pidfile and exec root under
`.cache/docker-run`, so it never collides with a system engine. `stop()` stops
only an engine this object started; `python -m localenv.docker stop` stops
one an earlier run left behind (it crashed before its stop()).

Our engine runs with `--iptables=false --bridge=none`: builds use the host
network (`docker build --network host`) and tests run containers with
`--network none`, so it creates no docker0 bridge and no iptables rules.
Trap for an engine we did not start: Docker sets the iptables FORWARD policy
to DROP, which silently drops bridged traffic of others on the same host.
Ours also runs kind's nodes (localenv.kind): they sit on the Docker network
kind creates, reached from the host through its gateway.

Where this machine cannot run an engine (not root, no dockerd even after
hack/host-packages.sh, no overlayfs), `ensure()` raises `EngineUnavailable`
whose message is the reason, which callers report as SKIPPED.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from localenv.binaries import CACHE_DIR, ROOT
from localenv.procs import wait_for


class EngineUnavailable(RuntimeError):
    """No Docker engine can run here; the message says why."""


class DockerEngine:
    """A Docker engine that answers; `docker()` runs the CLI against it."""

    def __init__(self, data_root: Path | None = None, run_dir: Path | None = None) -> None:
        cache = CACHE_DIR.resolve()
        self.data_root = data_root or cache / "docker"
        self.run_dir = run_dir or cache / "docker-run"
        self.socket = self.run_dir / "docker.sock"
        self.pidfile = self.run_dir / "docker.pid"
        self.exec_root = self.run_dir / "exec"
        self.log_path = self.run_dir / "dockerd.log"
        # None: the CLI's default engine; else the DOCKER_HOST of ours.
        self.host: str | None = None
        self.ready = False
        self.started = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment for a `docker` CLI that talks to this engine."""
        env = dict(os.environ)
        # BuildKit would pull docker/dockerfile for a `# syntax=` line and
        # fail without a registry; the legacy builder ignores the line.
        env["DOCKER_BUILDKIT"] = "0"
        if self.host is not None:
            env["DOCKER_HOST"] = self.host
        return env

    def docker(
        self,
        *args: str,
        check: bool = True,
        capture: bool = True,
        stdin: str | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS` against this engine (text output)."""
        return subprocess.run(
            ["docker", *args],
            env=self.env,
            check=check,
            capture_output=capture,
            input=stdin,
            text=True,
            timeout=timeout,
        )

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def image_size(self, tag: str) -> int:
        """The image's size in bytes, as `docker images` reports it."""
        return int(self.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())

    def answers(self, host: str | None) -> bool:
        env = dict(os.environ)
        env.pop("DOCKER_HOST", None)
        if host is not None:
            env["DOCKER_HOST"] = host
        try:
            return (
                subprocess.run(
                    ["docker", "info", "--format", "{{.ServerVersion}}"],
                    env=env,
                    capture_output=True,
                    timeout=20,
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            return False

    def ensure(self) -> DockerEngine:
        """An engine that answers: an existing one, else our own dockerd."""
        if self.ready:
            return self
        if shutil.which("docker") is None:
            _install_host_packages()
        if shutil.which("docker") is None:
            raise EngineUnavailable("no docker CLI (hack/host-packages.sh could not install it)")
        if self.answers(os.environ.get("DOCKER_HOST")):
            self.host, self.ready = os.environ.get("DOCKER_HOST"), True
            return self
        ours = f"unix://{self.socket}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Two checkouts share .cache/docker: one engine per data root.
        with locked(self.run_dir / "lock"):
            if not self.answers(ours):
                self._start()
        self.host, self.ready = ours, True
        return self

    def _start(self) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise EngineUnavailable(reason)
        _stop_stale(self.pidfile)
        self.data_root.mkdir(parents=True, exist_ok=True)
        argv = [
            "dockerd",
            f"--host=unix://{self.socket}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            "--storage-driver=overlay2",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--log-level=warn",
        ]
        if short_bounding_set():
            # A privileged container asks for every capability; runc cannot
            # grant one outside the host's bounding set (hack/runc-bounded).
            wrapper = self.run_dir / "runc-bounded"
            shutil.copy(ROOT / "hack" / "runc-bounded", wrapper)
            wrapper.chmod(0o755)
            argv += [f"--add-runtime=bounded={wrapper}", "--default-runtime=bounded"]
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start {' '.join(argv)}\n".encode())
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started = True
        host = f"unix://{self.socket}"

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self._proc.returncode}: see {self.log_path}")
            return self.answers(host)

        try:
            wait_for(ready, timeout=60, what=f"dockerd ({self.log_path})", interval=0.2)
        except Exception:
            self.stop()
            raise

    def adopt(self) -> bool:
        """Own the project's engine an earlier run left running (it crashed
        before its stop()), so that stop() stops it. False if there is none."""
        try:
            pid = int(self.pidfile.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            return False
        if comm != "dockerd":
            return False
        self._adopted, self.started = pid, True
        self.host, self.ready = f"unix://{self.socket}", True
        return True

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why this machine cannot run our own dockerd, or None."""
        if os.geteuid() != 0:
            return f"starting dockerd needs root (running as uid {os.geteuid()})"
        if shutil.which("dockerd") is None:
            _install_host_packages()
        if shutil.which("dockerd") is None:
            return "no dockerd binary (hack/host-packages.sh could not install docker.io)"
        try:
            filesystems = Path("/proc/filesystems").read_text()
        except OSError:
            filesystems = ""
        if "overlay" not in filesystems.split():
            subprocess.run(["modprobe", "overlay"], capture_output=True, check=False)
            filesystems = Path("/proc/filesystems").read_text()
            if "overlay" not in filesystems.split():
                return "no overlayfs in this kernel (dockerd --storage-driver overlay2 needs it)"
        return None

    def stop(self, grace: float = 20.0) -> list[str]:
        """Stop the engine if this object started it; return what is left behind."""
        left: list[str] = []
        if not self.started:
            return left
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        elif self._adopted is not None:
            _stop_pid(self._adopted, grace)
        self.started = self.ready = False
        self.host = None
        self._proc = None
        self._adopted = None
        # dockerd leaves the network namespace of its host-mode sandbox
        # mounted under <exec-root>/netns (with the default exec root, that is
        # /run/docker/netns/default) when it exits.
        for mount in _mounts_under([self.exec_root / "netns"]):
            subprocess.run(["umount", mount], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                Path(mount).unlink()
        for mount in _mounts_under([self.run_dir, self.data_root]):
            left.append(f"mount {mount}")
        if self.socket.exists():
            left.append(f"socket {self.socket}")
        return left


def short_bounding_set() -> bool:
    """Whether this process's capability bounding set lacks a capability the
    kernel has (these machines: CAP_SYS_RESOURCE), so that a privileged
    container cannot be given all of them."""
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        status = Path("/proc/self/status").read_text().splitlines()
        bits = next(int(line.split()[1], 16) for line in status if line.startswith("CapBnd:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bits != (1 << (last + 1)) - 1


def _stop_pid(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace`, for a process that is not our child."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not Path(f"/proc/{pid}").exists():
            return


def _install_host_packages() -> None:
    subprocess.run(["bash", str(ROOT / "hack" / "host-packages.sh")], check=False)


def _mount_points() -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    # Octal escapes (\040 for a space) are left as they are: our paths have none.
    return [line.split()[1] for line in lines if len(line.split()) > 1]


def _mounts_under(roots: Sequence[Path]) -> list[str]:
    prefixes = [str(root).rstrip("/") + "/" for root in roots]
    return [m for m in _mount_points() if any(m.startswith(p) or m + "/" == p for p in prefixes)]


def _stop_stale(pidfile: Path) -> None:
    """A dockerd of ours that died without cleaning up leaves its pidfile;
    dockerd refuses to start while the pid in it runs a dockerd."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = ""
    if comm == "dockerd":
        raise EngineUnavailable(f"a dockerd (pid {pid}) holds {pidfile} but does not answer")
    with contextlib.suppress(OSError):
        pidfile.unlink()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes (checkouts share .cache)."""
    with path.open("a") as handle:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} stayed locked for 120 s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: Sequence[str]) -> int:
    """`python -m localenv.docker stop`: stop the project's engine left running."""
    if list(argv) != ["stop"]:
        print("usage: python -m localenv.docker stop", file=sys.stderr)
        return 2
    engine = DockerEngine()
    if not engine.adopt():
        print(f"no engine of this project running ({engine.pidfile})")
        return 0
    left = engine.stop()
    print("stopped the project's engine" + (f"; left behind: {', '.join(left)}" if left else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
