"""A burst of creations (issue #18, failure 6): finishing work behind new starts?

N echo executions are created in C `kubectl create` calls, as a user would.
While the starts drain at the start rate, executions that already ran report
how they ended; those reports (and deletions) must not wait behind the starts.

Figures, from the operator's own view (a watch on the namespace):
  - drain: first creation -> every execution Succeeded;
  - report latency: WorkflowStarted=True -> Succeeded written, p50 / p99 / max
    (an echo agent ends within a second of its start);
  - report_status activities that failed (each a retry in Temporal and a
    traceback in the operator's log);
  - the visibility calls the workflow watch made meanwhile.

Usage: python bench/backlog.py [--executions 2000] [--calls 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.executions import bench_env, body, pct  # noqa: E402


async def main(count: int, calls: int, extra: dict[str, str]) -> None:
    async with bench_env("backlog", {"AGENTEXEC_NO_RUNNER_SECONDS": "600", **extra}) as env:
        names = [f"b-{n}" for n in range(count)]
        per_call = -(-count // calls)
        began = time.monotonic()
        for start in range(0, count, per_call):
            manifests = "\n---\n".join(
                json.dumps(body(n, n)) for n in names[start : start + per_call]
            )
            await asyncio.to_thread(
                env.plane.kubectl, "create", "-n", env.namespace, "-f", "-", stdin=manifests
            )
        await env.observer.until(env.observer.done, names, 1800)
        drain = time.monotonic() - began
        latency = [env.observer.done[n] - env.observer.started[n] for n in names]
        failed = sum(
            1
            for line in env.operator.log().splitlines()
            if "report_status" in line and ("failed" in line.lower() or "Timeout" in line)
        )
        print(f"{count} echo executions in {calls} kubectl create calls")
        print(f"  drain: {drain:.1f} s")
        print(
            f"  report latency (started -> Succeeded written): p50 "
            f"{statistics.median(latency):.2f} s, p99 {pct(latency, 0.99):.2f} s, "
            f"max {max(latency):.2f} s"
        )
        print(f"  report_status activities failed: {failed}")
        watch_calls = env.operator.statusz()["executions"].get("temporal_watch_calls")
        print(f"  Temporal calls of the workflow watch meanwhile: {watch_calls}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the operator")
    args = parser.parse_args()
    asyncio.run(main(args.executions, args.calls, dict(e.split("=", 1) for e in args.env)))
