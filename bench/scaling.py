"""Operator memory and reconcile latency as the number of executions grows.

Real control plane, real Temporal, the operator as a process (as the image
runs it: MALLOC_ARENA_MAX=2). The population grows to each step (100, 1000,
5000 by default; echo executions, all run to Succeeded); at each step the
bench records the operator's RSS and the create -> WorkflowStarted latency of
a probe batch created one by one. The whole run is repeated (--repeat, fresh
environment each time); figures are medians over the runs and ratios are
against the first step.

Usage: python bench/scaling.py [--steps 100 1000 5000] [--probe 30] [--repeat 3]
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

from bench.executions import (  # noqa: E402
    bench_env,
    create_many,
    each,
    median_of,
    pct,
    rss_mb,
    started_one_by_one,
)


async def one_run(steps: list[int], probe: int) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
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
            lat = await started_one_by_one(env, [f"probe-{step}-{n}" for n in range(probe)], 60)
            assert env.operator.pid is not None
            row = {"rss": rss_mb(env.operator.pid), "p50": statistics.median(lat)}
            row["p99"] = pct(lat, 0.99)
            rows.append(row)
            print(
                f"{step} executions (filled in {fill:.0f} s): RSS {row['rss']:.0f} MB, "
                f"create->started p50 {row['p50'] * 1000:.0f} ms p99 {row['p99'] * 1000:.0f} ms",
                flush=True,
            )
    return rows


async def main(steps: list[int], probe: int, repeat: int) -> None:
    runs = []
    for run in range(1, repeat + 1):
        print(f"run {run}/{repeat} (fresh control plane, Temporal and operator)", flush=True)
        runs.append(await one_run(steps, probe))
    # per step: the list of that step's rows over the runs
    by_step = [[rows[i] for rows in runs] for i in range(len(steps))]
    medians = [{key: median_of(rows, key) for key in rows[0]} for rows in by_step]
    base = medians[0]
    print(f"\nOperator scaling (median of {repeat} runs; ratios against the first step)")
    print("| executions | RSS MB | x | create->started p50 ms | x | p99 ms | x | RSS in each run |")
    print("|---|---|---|---|---|---|---|---|")
    for step, m, rows in zip(steps, medians, by_step, strict=True):
        print(
            f"| {step} | {m['rss']:.0f} | {m['rss'] / base['rss']:.2f} "
            f"| {m['p50'] * 1000:.0f} | {m['p50'] / base['p50']:.2f} "
            f"| {m['p99'] * 1000:.0f} | {m['p99'] / base['p99']:.2f} | {each(rows, 'rss', '.0f')} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--probe", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs; figures are medians")
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.probe, args.repeat))
