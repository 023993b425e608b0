"""A real MCP server (the ``mcp`` SDK's server side) for the agent loop's tools.

Run as a program (``python -m localenv.mcp_server --port N --calls FILE``),
it serves Streamable HTTP on loopback with a few small tools, and appends
one JSON line per tool call it received to FILE (the tool, its arguments,
the call key and the Authorization header), so that a test can count what
the server saw. ``make run``, the tests and the benchmark start it the
same way (``MCPServerProcess``).

Tools: ``add(a, b)``, integers, answers their sum (after ``--delay`` seconds:
a test can stop a runner in the middle of a call); ``fail()`` answers an
error result; ``delete_everything(confirm)`` is the tool an Agent marks as
needing approval.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer

from localenv.procs import ManagedProcess, free_port

# The key the runner's MCP client puts in each call's _meta (runner/tools.py).
CALL_KEY_META = "agentexec.io/call"


def serve(port: int, calls: Path, delay: float) -> None:
    server = MCPServer("agentexec-fixture")

    def record(tool: str, arguments: dict[str, object], ctx: Context | None = None) -> None:
        meta = dict(ctx.request_context.meta or {}) if ctx is not None else {}
        # The HTTP request the call came in (Streamable HTTP): which
        # credential the runner sent (a test's, from its MCP servers file).
        request = getattr(ctx.request_context, "request", None) if ctx is not None else None
        headers = getattr(request, "headers", None) or {}
        line = {
            "tool": tool,
            "arguments": arguments,
            "call": meta.get(CALL_KEY_META),
            "authorization": headers.get("authorization"),
        }
        with calls.open("a") as out:
            out.write(json.dumps({**line, "at": time.time()}) + "\n")

    @server.tool()
    def add(a: int, b: int, ctx: Context) -> str:
        """Add two integers and answer their sum."""
        record("add", {"a": a, "b": b}, ctx)
        if delay > 0:
            time.sleep(delay)
        return str(a + b)

    @server.tool()
    def fail(ctx: Context) -> str:
        """A tool that always fails."""
        record("fail", {}, ctx)
        raise ValueError("this tool always fails")

    @server.tool()
    def delete_everything(confirm: bool, ctx: Context) -> str:
        """Delete everything (a tool that needs a person's approval)."""
        record("delete_everything", {"confirm": confirm}, ctx)
        return "deleted nothing: this is a test server"

    server.run(
        "streamable-http", host="127.0.0.1", port=port, stateless_http=True, json_response=True
    )


class MCPServerProcess:
    """The fixture server as a child process on a free loopback port."""

    def __init__(self, workdir: Path, delay: float = 0.0, port: int | None = None) -> None:
        self.port = port or free_port()
        self.calls_path = workdir / "mcp-calls.jsonl"
        self.calls_path.touch()
        argv = [
            sys.executable,
            "-m",
            "localenv.mcp_server",
            "--port",
            str(self.port),
            "--calls",
            str(self.calls_path),
            "--delay",
            str(delay),
        ]
        root = Path(__file__).resolve().parent.parent
        self._proc = ManagedProcess("mcp-server", argv, workdir / "mcp-server.log", cwd=root)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def calls(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.calls_path.read_text().splitlines() if line]

    def start(self) -> None:
        self._proc.start()
        self._proc.wait_until(self._serving, 30, f"MCP server on {self.url}", 0.1)

    def stop(self) -> None:
        self._proc.stop(grace=5)

    def _serving(self) -> bool:
        # Every answer closed here: one left to the garbage collector fails
        # whichever test runs then, on its ResourceWarning.
        try:
            with urllib.request.urlopen(self.url, timeout=1):
                return True
        except urllib.error.HTTPError as refused:
            refused.close()
            return True  # it answers (a GET without a session is refused)
        except OSError:
            return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    serve(args.port, args.calls, args.delay)


if __name__ == "__main__":
    main()
