"""What the operator process loads: the runner's tools (the mcp SDK, ~30 MB
of RSS and half a second of start-up) only when it runs a runner itself."""

from __future__ import annotations

import subprocess
import sys


def test_the_operator_without_a_runner_does_not_load_the_runners_tools() -> None:
    probe = (
        "import sys, agentexec.app; "
        "print([m for m in ('mcp', 'agentexec.runner.tools') if m in sys.modules])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == "[]", loaded
