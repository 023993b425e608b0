"""Runners as their own workload (issue #13).

Real control plane, real Temporal dev server, the operator as a process with
its in-process runner off (AGENTEXEC_RUNNER_ENABLED=false, the chart's
default) and `agentexec-operator runner` processes serving the runner queue,
each allowed --concurrency agents at once (AGENTEXEC_RUNNER_MAX_CONCURRENT).
The agent is the built-in echo agent with parameters.delaySeconds: I/O-bound
(asyncio.sleep), so a runner is bound by its concurrency limit, not by CPU.

  (1) agents per second with one runner, then with two: --count executions
      created at once each time; the rate is the least-squares slope of
      completions (phase terminal, as the bench's watch sees it) over time,
      in the middle 80 % of them (ramp-up and tail left out; completions
      arrive in waves of one runner's limit, which a first-to-last difference
      would quantise). Target: two / one >= 1.8. Beside it, the mean number
      of agents in flight in all runners over the same window (their
      /statusz, every 0.2 s): at the limit, the runners are the bottleneck.
  (2) the operator's own CPU (utime + stime from /proc/<pid>/stat) per
      execution over --cpu-count executions with fast agents (delaySeconds 0)
      and then slow ones (--slow seconds), both batches run by the two
      runners, from the first create until all are finished plus one second.
      Target: slow / fast <= 1.2. Also the operator's idle CPU rate (nothing
      running), which says what the extra wall time of the slow batch costs
      by itself, the reconciles per execution (the operator's
      agentexec_reconcile_duration_seconds count), and /healthz latency
      p50/p99 sampled every 50 ms while idle and while a second slow batch
      runs, from all started to all finished
      (the CPU batches are not sampled: the probes would cost the operator
      CPU in proportion to wall time).

Each figure is the median of --repeat runs, each in a fresh environment; each
run's own figures are printed too.

Usage: python bench/runners.py [--count 64] [--delay 4] [--concurrency 8]
                               [--cpu-count 96] [--slow 5] [--idle 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.executions import Env, bench_env, create_many, each, median_of, pct  # noqa: E402
from tests.support.operator import RunnerProcess  # noqa: E402

OPERATOR_ENV = {
    "AGENTEXEC_RUNNER_ENABLED": "false",
    # The operator's defaults (OperatorProcess sets faster test values).
    "AGENTEXEC_CONDITION_SYNC_SECONDS": "2",
    "AGENTEXEC_SWEEP_SECONDS": "30",
    # The backlog on the runner queue is the point here, not a missing runner:
    # no NoRunner report (an extra status write) however long an agent waits.
    "AGENTEXEC_NO_RUNNER_SECONDS": "600",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3, state
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def completion_rate(times: list[float]) -> float:
    """Completions per second: the slope of the completion count over time,
    middle 80 % of the completions."""
    ordered = sorted(times)
    lo, hi = len(ordered) // 10, len(ordered) - len(ordered) // 10
    xs = ordered[lo:hi]
    return statistics.linear_regression(xs, [float(i) for i in range(lo, hi)]).slope


def healthz_seconds(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        r.read()
    return time.perf_counter() - started


async def sample_healthz(port: int, stop: asyncio.Event, every: float = 0.05) -> list[float]:
    samples: list[float] = []
    while not stop.is_set():
        samples.append(await asyncio.to_thread(healthz_seconds, port))
        await asyncio.sleep(every)
    return samples


def start_runner(env: Env, n: int, concurrency: int) -> RunnerProcess:
    runner = RunnerProcess(
        env.workdir,
        env.temporal.address,
        env.operator.runner_queue,
        {
            "AGENTEXEC_RUNNER_MAX_CONCURRENT": str(concurrency),
            "LOG_LEVEL": "WARNING",
            "MALLOC_ARENA_MAX": "2",
        },
        name=f"runner-{n}",
    )
    runner.start()
    return runner


async def batch(env: Env, prefix: str, count: int, delay: float) -> list[str]:
    """Create ``count`` echo executions at once and wait until all finished."""
    names = [f"{prefix}-{n}" for n in range(count)]
    params = {"delaySeconds": delay} if delay else None
    await create_many(env.kube, env.namespace, names, params)
    await env.observer.until(env.observer.done, names, 600)
    return names


def middle(times: list[float]) -> tuple[float, float]:
    """The window completion_rate fits: from the 10 % to the 90 % completion."""
    ordered = sorted(times)
    return ordered[len(ordered) // 10], ordered[len(ordered) - len(ordered) // 10 - 1]


async def sample_in_flight(
    runners: list[RunnerProcess], stop: asyncio.Event, every: float = 0.2
) -> list[tuple[float, int]]:
    """(time, agents in flight in all runners), from the runners' /statusz."""

    def total() -> int:
        return sum(int(r.statusz()["runner"]["in_flight"]) for r in runners)

    samples: list[tuple[float, int]] = []
    while not stop.is_set():
        samples.append((time.monotonic(), await asyncio.to_thread(total)))
        await asyncio.sleep(every)
    return samples


async def throughput(
    env: Env, runners: list[RunnerProcess], prefix: str, count: int, delay: float
) -> tuple[float, float]:
    """Agents per second, and the mean number in flight in the same window."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_in_flight(runners, stop))
    names = await batch(env, prefix, count, delay)
    stop.set()
    samples = await sampler
    times = [env.observer.done[n] for n in names]
    start, end = middle(times)
    busy = [n for t, n in samples if start <= t <= end] or [0]
    return completion_rate(times), statistics.mean(busy)


def reconciles(env: Env) -> float:
    """How many reconciles the operator has run (its own histogram's count)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in env.operator.metrics().splitlines()
        if line.startswith("agentexec_reconcile_duration_seconds_count")
    )


async def operator_cpu(
    env: Env, prefix: str, count: int, delay: float
) -> tuple[float, float, float]:
    """The operator's CPU seconds, the wall seconds and the reconciles of one batch."""
    assert env.operator.pid is not None
    rec0 = reconciles(env)
    cpu0, t0 = cpu_seconds(env.operator.pid), time.monotonic()
    await batch(env, prefix, count, delay)
    await asyncio.sleep(1)  # the writes that follow the terminal phase (event)
    cpu, wall = cpu_seconds(env.operator.pid) - cpu0, time.monotonic() - t0
    return cpu, wall, reconciles(env) - rec0


async def one_run(a: argparse.Namespace) -> dict[str, float]:
    runners: list[RunnerProcess] = []
    r: dict[str, float] = {}
    try:
        async with bench_env(
            "runners", OPERATOR_ENV, lambda env: runners.append(start_runner(env, 1, a.concurrency))
        ) as env:
            assert env.operator.pid is not None
            r["tp1"], r["busy1"] = await throughput(env, runners, "one", a.count, a.delay)
            print(
                f"(1) one runner: {r['tp1']:.2f} agents/s, {r['busy1']:.1f} in flight", flush=True
            )
            runners.append(start_runner(env, 2, a.concurrency))
            r["tp2"], r["busy2"] = await throughput(env, runners, "two", a.count, a.delay)
            r["tp_ratio"] = r["tp2"] / r["tp1"]
            print(
                f"(1) two runners: {r['tp2']:.2f} agents/s, {r['busy2']:.1f} in flight, "
                f"ratio {r['tp_ratio']:.2f}",
                flush=True,
            )

            cpu0 = cpu_seconds(env.operator.pid)
            await asyncio.sleep(a.idle)
            r["idle_cpu"] = (cpu_seconds(env.operator.pid) - cpu0) / a.idle
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_healthz(env.operator.http_port, stop))
            await asyncio.sleep(a.idle)
            stop.set()
            idle = await sampler

            cpu, wall, rec = await operator_cpu(env, "fast", a.cpu_count, 0)
            r["fast_cpu"], r["fast_wall"], r["fast_rec"] = (
                cpu / a.cpu_count,
                wall,
                rec / a.cpu_count,
            )
            r["fast_pace"] = a.cpu_count / (wall - 1)  # less operator_cpu's trailing second
            cpu, wall, rec = await operator_cpu(env, "slow", a.cpu_count, a.slow)
            r["slow_cpu"], r["slow_wall"], r["slow_rec"] = (
                cpu / a.cpu_count,
                wall,
                rec / a.cpu_count,
            )
            r["cpu_ratio"] = r["slow_cpu"] / r["fast_cpu"]
            # What the slow batch cost beyond the idle operator's own pace over
            # its extra wall time.
            extra = r["idle_cpu"] * (r["slow_wall"] - r["fast_wall"]) / a.cpu_count
            r["cpu_ratio_net"] = (r["slow_cpu"] - extra) / r["fast_cpu"]
            print(
                f"(2) operator CPU per execution: fast {r['fast_cpu'] * 1000:.1f} ms "
                f"({r['fast_wall']:.1f} s), slow {r['slow_cpu'] * 1000:.1f} ms "
                f"({r['slow_wall']:.1f} s), ratio {r['cpu_ratio']:.2f}; idle "
                f"{r['idle_cpu'] * 1000:.1f} ms/s, ratio less the idle pace "
                f"{r['cpu_ratio_net']:.2f}; reconciles per execution fast "
                f"{r['fast_rec']:.2f}, slow {r['slow_rec']:.2f}",
                flush=True,
            )

            # Sampled once all are started (the creation burst is (1)'s
            # business) until all finished: agents waiting, and completing in
            # waves of the runners' limits, each with its report and status write.
            names = [f"probed-{n}" for n in range(a.cpu_count)]
            await create_many(env.kube, env.namespace, names, {"delaySeconds": a.slow})
            await env.observer.until(env.observer.started, names, 600)
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_healthz(env.operator.http_port, stop))
            await env.observer.until(env.observer.done, names, 600)
            stop.set()
            busy = await sampler
            r["idle_p50"], r["idle_p99"] = statistics.median(idle), pct(idle, 0.99)
            r["busy_p50"], r["busy_p99"] = statistics.median(busy), pct(busy, 0.99)
            print(
                f"(2) /healthz idle p50 {r['idle_p50'] * 1000:.1f} ms p99 "
                f"{r['idle_p99'] * 1000:.1f} ms ({len(idle)} samples); slow agents running "
                f"p50 {r['busy_p50'] * 1000:.1f} ms p99 {r['busy_p99'] * 1000:.1f} ms "
                f"({len(busy)} samples)",
                flush=True,
            )
            for runner in runners:
                runner.stop()
    finally:
        for runner in runners:
            runner.stop()
    return r


def report(runs: list[dict[str, float]], a: argparse.Namespace) -> None:
    m: dict[str, Any] = {key: median_of(runs, key) for key in runs[0]}
    print(
        f"\nRunners as their own workload (median of {len(runs)} runs; echo agent, "
        f"AGENTEXEC_RUNNER_MAX_CONCURRENT={a.concurrency})"
    )
    print("| figure | median | runs | target |")
    print("|---|---|---|---|")
    print(
        f"| (1) agents/s, {a.count} x delaySeconds {a.delay:g}: one runner | {m['tp1']:.2f} "
        f"({m['busy1']:.1f} in flight) | {each(runs, 'tp1', '.2f')} "
        f"| ideal {a.concurrency / a.delay:.2f} |"
    )
    print(
        f"| (1) agents/s, two runners | {m['tp2']:.2f} ({m['busy2']:.1f} in flight) "
        f"| {each(runs, 'tp2', '.2f')} | ideal {2 * a.concurrency / a.delay:.2f} |"
    )
    print(
        f"| (1) two / one | {m['tp_ratio']:.2f} | {each(runs, 'tp_ratio', '.2f')} "
        f"| >= 1.8: {'met' if m['tp_ratio'] >= 1.8 else 'MISSED'} |"
    )
    print(
        f"| (2) operator CPU per execution, {a.cpu_count} fast (delaySeconds 0) "
        f"| {m['fast_cpu'] * 1000:.1f} ms ({m['fast_wall']:.1f} s) "
        f"| {each(runs, 'fast_cpu', '.1f', 1000)} ms | |"
    )
    print(
        f"| (2) operator CPU per execution, {a.cpu_count} slow (delaySeconds {a.slow:g}) "
        f"| {m['slow_cpu'] * 1000:.1f} ms ({m['slow_wall']:.1f} s) "
        f"| {each(runs, 'slow_cpu', '.1f', 1000)} ms | |"
    )
    print(
        f"| (2) the fast batch's pace (the pipeline without a runner limit) "
        f"| {m['fast_pace']:.2f} executions/s | {each(runs, 'fast_pace', '.2f')} | |"
    )
    print(
        f"| (2) reconciles per execution, fast / slow | {m['fast_rec']:.2f} / "
        f"{m['slow_rec']:.2f} | {each(runs, 'slow_rec', '.2f')} (slow) | |"
    )
    print(
        f"| (2) slow / fast | {m['cpu_ratio']:.2f} | {each(runs, 'cpu_ratio', '.2f')} "
        f"| <= 1.2: {'met' if m['cpu_ratio'] <= 1.2 else 'MISSED'} |"
    )
    print(
        f"| (2) operator idle CPU | {m['idle_cpu'] * 1000:.1f} ms/s "
        f"| {each(runs, 'idle_cpu', '.1f', 1000)} ms/s | |"
    )
    print(
        f"| (2) slow / fast, less the idle pace over the extra wall time "
        f"| {m['cpu_ratio_net']:.2f} | {each(runs, 'cpu_ratio_net', '.2f')} | |"
    )
    print(
        f"| (2) /healthz idle | p50 {m['idle_p50'] * 1000:.1f} ms, p99 "
        f"{m['idle_p99'] * 1000:.1f} ms | p99 {each(runs, 'idle_p99', '.1f', 1000)} ms | |"
    )
    print(
        f"| (2) /healthz while slow agents run | p50 {m['busy_p50'] * 1000:.1f} ms, p99 "
        f"{m['busy_p99'] * 1000:.1f} ms | p99 {each(runs, 'busy_p99', '.1f', 1000)} ms "
        f"| unchanged |"
    )


async def main(a: argparse.Namespace) -> None:
    runs = []
    for run in range(1, a.repeat + 1):
        print(f"run {run}/{a.repeat} (fresh control plane, Temporal, operator)", flush=True)
        runs.append(await one_run(a))
    report(runs, a)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=64, help="executions per throughput batch")
    parser.add_argument("--delay", type=float, default=4.0, help="delaySeconds in (1)")
    parser.add_argument("--concurrency", type=int, default=8, help="agents per runner at once")
    parser.add_argument("--cpu-count", type=int, default=96, help="executions per batch in (2)")
    parser.add_argument("--slow", type=float, default=5.0, help="delaySeconds of slow agents")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of each idle window")
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs; figures are medians")
    asyncio.run(main(parser.parse_args()))
