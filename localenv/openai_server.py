"""A real OpenAI-compatible Chat Completions server, for the chat agent.

llama.cpp's server as llama-cpp-python packages it (``python -m
llama_cpp.server``), serving the tiny random-weights model that
hack/openai-server.sh writes; both are built once into ``.cache/tools``.
``make run`` and the tests start it the same way.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from localenv.binaries import CACHE_DIR, ROOT, versions
from localenv.procs import ManagedProcess, free_port

MODEL = "tiny"  # the name the server answers to (its --model_alias)


def tool_dir() -> Path:
    pins = versions()
    return (
        CACHE_DIR
        / "tools"
        / f"llama-cpp-python-{pins['LLAMA_CPP_PYTHON_VERSION']}-r{pins['LLAMA_CPP_BUILD_REV']}"
    )


def ensure_installed() -> Path:
    """The server's venv, built by hack/openai-server.sh on first use (minutes)."""
    tool = tool_dir()
    if not (tool / ".installed").exists():
        subprocess.run(["bash", str(ROOT / "hack" / "openai-server.sh")], check=True)
    return tool


class OpenAIServer:
    """llama.cpp's server on a loopback port; ``api_key`` set: it requires it."""

    def __init__(
        self,
        workdir: Path,
        api_key: str | None = None,
        port: int | None = None,
        n_ctx: int = 512,
    ) -> None:
        tool = ensure_installed()
        self.port = port or free_port()
        self.api_key = api_key
        argv = [
            str(tool / "bin" / "python"),
            "-m",
            "llama_cpp.server",
            "--model",
            str(tool / "tiny-llama.gguf"),
            "--model_alias",
            MODEL,
            "--chat_format",
            "chatml",
            "--n_ctx",
            str(n_ctx),  # an agent loop's conversation grows with each step
            "--n_threads",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if api_key is not None:
            # One word: a key may start with "-" (token_urlsafe), which
            # argparse would take for an option and the server would exit.
            argv.append(f"--api_key={api_key}")
        self._proc = ManagedProcess("openai-server", argv, workdir / "openai-server.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._proc.running

    def start(self, wait: bool = True) -> None:
        self._proc.start()
        if wait:
            self._proc.wait_until(
                self._serving, 120, f"OpenAI-compatible server on {self.base_url}", 0.2
            )

    def __enter__(self) -> OpenAIServer:
        """``with OpenAIServer(...) as server``: started, and stopped after."""
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._proc.stop(grace=10)

    def freeze(self) -> None:
        """SIGSTOP the server: connections are accepted (by the kernel) and
        nothing is answered, as a hung model server."""
        self._proc.freeze()

    def thaw(self) -> None:
        self._proc.thaw()

    def log_text(self) -> str:
        return self._proc.log_path.read_text(errors="replace")

    def _serving(self) -> bool:
        if not self._proc.running:
            raise RuntimeError(f"the server exited:\n{self._proc.log_tail()}")
        request = urllib.request.Request(f"{self.base_url}/models")
        if self.api_key is not None:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                models = json.load(response)
        except (urllib.error.URLError, OSError):
            return False
        return any(m.get("id") == MODEL for m in models.get("data", []))
