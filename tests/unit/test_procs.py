"""localenv's process runner: a server that dies is said at once, not after
the whole wait (the test fixtures start every real component through it)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from localenv.procs import ManagedProcess, ProcessExited


def test_waiting_on_a_process_that_exits_fails_at_once_with_its_log(tmp_path: Path) -> None:
    dies = ManagedProcess(
        "dies", [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"], tmp_path / "log"
    )
    dies.start()
    began = time.monotonic()
    with pytest.raises(ProcessExited, match="exited with code 3") as failed:
        dies.wait_until(lambda: False, 60, "its port")
    assert time.monotonic() - began < 10
    assert "its port never came" in str(failed.value)
    assert "bad flag" in str(failed.value)
