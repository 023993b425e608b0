"""Operator memory and reconcile latency as the number of executions grows.

Real control plane, real Temporal, the operator as a process (as the image
runs it: MALLOC_ARENA_MAX=2). The population grows to each step (100, 1000,
5000 by default; echo executions, all run to Succeeded); at each step the
bench records the operator's RSS and the create -> WorkflowStarted latency of
a probe batch created one by one. Ratios are against the first step,
measured in the same run.

Usage: python bench/scaling.py [--steps 100 1000 5000] [--probe 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentexec.kube import Kube  # noqa: E402
from bench.executions import bench_env, body, create_many, pct, rss_mb  # noqa: E402


async def main(steps: list[int], probe: int) -> None:
    rows: list[tuple[int, float, float, float]] = []
    population = 0
    async with bench_env("scaling", {"AGENTEXEC_SWEEP_SECONDS": "60"}) as env:
        kube, observer, ns = env.kube, env.observer, env.namespace
        for step in steps:
            names = [f"pop-{n}" for n in range(population, step)]
            started = time.monotonic()
            await create_many(kube, ns, names)
            await observer.until(observer.done, names, 1800)
            population = step
            fill = time.monotonic() - started
            lat = []
            for n in range(probe):
                name = f"probe-{step}-{n}"
                t0 = time.monotonic()
                await kube.request("POST", Kube.path(ns), body(name))
                await observer.until(observer.started, [name], 60)
                lat.append(observer.started[name] - t0)
            assert env.operator.pid is not None
            rss = rss_mb(env.operator.pid)
            rows.append((step, rss, statistics.median(lat), pct(lat, 0.99)))
            print(
                f"{step} executions (filled in {fill:.0f} s): RSS {rss:.0f} MB, "
                f"create->started p50 {rows[-1][2] * 1000:.0f} ms p99 {rows[-1][3] * 1000:.0f} ms",
                flush=True,
            )

    base = rows[0]
    print("\nOperator scaling (ratios against the first step, same run)")
    print("| executions | RSS MB | x | create->started p50 ms | x | p99 ms | x |")
    print("|---|---|---|---|---|---|---|")
    for step, rss, p50, p99 in rows:
        print(
            f"| {step} | {rss:.0f} | {rss / base[1]:.2f} | {p50 * 1000:.0f} | {p50 / base[2]:.2f} "
            f"| {p99 * 1000:.0f} | {p99 / base[3]:.2f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--probe", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.probe))
