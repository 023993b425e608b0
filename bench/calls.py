"""The operator's Temporal calls per minute with 100 and with 1000 running
executions (issue #18): the cost to Temporal must not grow with them.

Real control plane, Temporal dev server (with its Prometheus endpoint) and the
operator as a process. The executions' agents wait on a task queue no runner
polls (AGENTEXEC_NO_RUNNER_SECONDS is an hour), so they stay Running and their
workflows idle on the activity: what is left is the operator's own traffic
(the connection probe, the workflow watch's visibility queries, its workers'
polls). The operator is the only client of this Temporal while it is
measured. The count is the frontend's own `service_requests` counter, per
operation, over --window seconds once the workers caught up (no workflow task
completed for --settle seconds), first with
100 running, then with 1000 (900 more created). Medians of --repeat fresh runs.

Usage: python bench/calls.py [--small 100] [--large 1000] [--window 60] [--settle 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.executions import bench_env, create_running  # noqa: E402
from localenv.procs import free_port  # noqa: E402

# Long polls: a poll is answered when a task comes or after ~60 s; their count
# is the workers' pollers, not work, and is printed apart.
POLLS = ("PollWorkflowTaskQueue", "PollActivityTaskQueue", "PollNexusTaskQueue")


def frontend_calls(metrics_port: int) -> Counter[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("service_requests{") and 'service_name="frontend"' in line:
            operation = re.search(r'operation="([^"]*)"', line)
            if operation:
                calls[operation.group(1)] += int(float(line.rsplit(" ", 1)[1]))
    return calls


async def quiet(port: int, settle: float, timeout: float = 600) -> None:
    """Until the operator's workers have caught up: no workflow task completed
    for ``settle`` seconds (a burst of starts leaves first workflow tasks
    queued well after every start returned)."""
    last, still = None, 0.0
    for _ in range(int(timeout)):
        done = (await asyncio.to_thread(frontend_calls, port))["RespondWorkflowTaskCompleted"]
        still = still + 1 if done == last else 0.0
        if still >= settle:
            return
        last = done
        await asyncio.sleep(1)


async def per_minute(port: int, window: float) -> Counter[str]:
    before = await asyncio.to_thread(frontend_calls, port)
    await asyncio.sleep(window)
    after = await asyncio.to_thread(frontend_calls, port)
    scale = 60 / window
    return Counter({op: round((after[op] - before[op]) * scale) for op in after - before})


def total(calls: Counter[str], polls: bool) -> int:
    return sum(n for op, n in calls.items() if (op in POLLS) == polls)


async def one_run(small: int, large: int, window: float, settle: float) -> dict[str, Counter[str]]:
    port = free_port()
    env_vars = {"AGENTEXEC_NO_RUNNER_SECONDS": "3600", "AGENTEXEC_SWEEP_SECONDS": "30"}
    rows: dict[str, Counter[str]] = {}
    async with bench_env("calls", env_vars, temporal_args=("--metrics-port", str(port))) as env:
        await create_running(env, [f"r-{n}" for n in range(small)])
        await quiet(port, settle)
        rows["small"] = await per_minute(port, window)
        await create_running(env, [f"r-{n}" for n in range(small, large)])
        await quiet(port, settle)
        rows["large"] = await per_minute(port, window)
    for label, n in (("small", small), ("large", large)):
        calls = rows[label]
        print(
            f"  {n} running: {total(calls, False)} calls/min besides polls "
            f"({dict(sorted((op, c) for op, c in calls.items() if op not in POLLS))}), "
            f"{total(calls, True)} polls/min",
            flush=True,
        )
    return rows


async def main(small: int, large: int, window: float, settle: float, repeat: int) -> None:
    runs = []
    for run in range(1, repeat + 1):
        print(f"run {run}/{repeat} (fresh control plane, Temporal and operator)", flush=True)
        runs.append(await one_run(small, large, window, settle))
    print(f"\nThe operator's Temporal calls per minute (median of {len(runs)} runs)")
    print("| running | calls/min besides polls | each run | polls/min | by operation (last run) |")
    print("|---|---|---|---|---|")
    med: dict[str, float] = {}
    for label, n in (("small", small), ("large", large)):
        each = [total(r[label], False) for r in runs]
        med[label] = statistics.median(each)
        polls = statistics.median(total(r[label], True) for r in runs)
        ops = ", ".join(f"{op} {c}" for op, c in sorted(runs[-1][label].items()) if op not in POLLS)
        print(f"| {n} | {med[label]:.0f} | {', '.join(map(str, each))} | {polls:.0f} | {ops} |")
    ratio = med["large"] / med["small"] if med["small"] else float("nan")
    print(f"| {large} / {small} | ratio {ratio:.2f} | | | equal within noise |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs; figures are medians")
    args = parser.parse_args()
    asyncio.run(main(args.small, args.large, args.window, args.settle, args.repeat))
