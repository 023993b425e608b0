"""Detection and recovery latency of the Temporal manager, ours vs the reference's.

Two managers run side by side in this process against one real Temporal dev
server: one with the default settings, one with the reference system's
parameters (15 s probe, 5 s timeout, 1-30 s backoff). Each cycle SIGKILLs the
server, waits until both managers noticed, restarts it, and waits until both
reconnected.

- detection: SIGKILL -> manager reports disconnected
- recovery: the server answers its first health check (an independent fresh
  client, polled every 20 ms) -> manager reports connected
- probe cost: one call of the server-wide health check (the old probe),
  DescribeNamespace, and the manager's probe (both at once, under one
  deadline), each timed on a warm client, before the cycles

Usage: python bench/manager.py [--cycles N] [--probe-calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from agentexec.metrics import Metrics  # noqa: E402
from agentexec.settings import TemporalSettings  # noqa: E402
from agentexec.temporal.manager import TemporalManager, forwarding_runtime  # noqa: E402
from localenv.temporal import TemporalDevServer, first_answer  # noqa: E402

REFERENCE = {
    "probe_interval": 15.0,
    "probe_interval_disconnected": 15.0,  # the reference probed at one pace
    "probe_timeout": 5.0,
    "backoff_base": 1.0,
    "backoff_max": 30.0,
}


async def probe_costs(address: str, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each probe, measured one after the other on one client."""
    manager = TemporalManager(TemporalSettings(address=address), (), Metrics())
    client = await Client.connect(address, runtime=forwarding_runtime())
    per_call = timedelta(seconds=1)
    request = DescribeNamespaceRequest(namespace="default")
    kinds: dict[str, Callable[[], Awaitable[object]]] = {
        "check_health (old probe)": lambda: client.service_client.check_health(timeout=per_call),
        "describe_namespace": lambda: client.workflow_service.describe_namespace(
            request, retry=False, timeout=per_call
        ),
        "manager probe (both)": lambda: manager.connection.ask(client),
    }
    costs: dict[str, list[float]] = {name: [] for name in kinds}
    for name, call in kinds.items():
        for _ in range(20):  # warm-up
            await call()
        for _ in range(calls):
            started = time.perf_counter()
            await call()
            costs[name].append(time.perf_counter() - started)
    return costs


async def wait_state(manager: TemporalManager, connected: bool, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while manager.connected != connected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"manager never became connected={connected}")
        await asyncio.sleep(0.005)
    return time.monotonic()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(cycles: int, probe_calls: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    rng = random.Random(7)
    workdir = Path(tempfile.mkdtemp(prefix="bench-manager-"))
    server = TemporalDevServer(workdir)
    server.start()
    costs = await probe_costs(server.address, probe_calls)
    base = TemporalSettings(address=server.address)
    configs = {
        "default": base,
        "reference": dataclasses.replace(base, **REFERENCE),  # type: ignore[arg-type]
    }
    managers = {name: TemporalManager(s, (), Metrics()) for name, s in configs.items()}
    detection: dict[str, list[float]] = {name: [] for name in managers}
    recovery: dict[str, list[float]] = {name: [] for name in managers}
    try:
        for m in managers.values():
            m.start()
        await asyncio.gather(*(wait_state(m, True) for m in managers.values()))
        for cycle in range(1, cycles + 1):
            # Kill at a random phase of both probe intervals, as a real crash would.
            await asyncio.sleep(rng.uniform(1.0, 1.0 + REFERENCE["probe_interval"]))
            killed = time.monotonic()
            server.kill()
            downs = await asyncio.gather(*(wait_state(m, False) for m in managers.values()))
            for name, down in zip(managers, downs, strict=True):
                detection[name].append(down - killed)
            server.start(wait=False)
            answered = await first_answer(server.address)
            ups = await asyncio.gather(*(wait_state(m, True) for m in managers.values()))
            for name, up in zip(managers, ups, strict=True):
                recovery[name].append(max(0.0, up - answered))
            print(
                f"cycle {cycle}: "
                + "  ".join(
                    f"{n}: detect {detection[n][-1]:.3f}s recover {recovery[n][-1]:.3f}s"
                    for n in managers
                ),
                flush=True,
            )
    finally:
        for m in managers.values():
            await m.stop()
        server.stop()

    print()
    print(f"Probe cost over {probe_calls} calls each (milliseconds)")
    print(f"{'probe':<26} {'p50':>8} {'p95':>8}")
    for name, values in costs.items():
        print(f"{name:<26} {statistics.median(values) * 1e3:>8.2f} {pct(values, 0.95) * 1e3:>8.2f}")
    print()
    print(f"Temporal manager latency over {cycles} SIGKILL/restart cycles (seconds)")
    heads = ("detect p50", "detect p95", "recover p50", "recover p95")
    print(f"{'settings':<10} " + " ".join(f"{h:>12}" for h in heads))
    for name in managers:
        d, r = detection[name], recovery[name]
        print(
            f"{name:<10} {statistics.median(d):>12.3f} {pct(d, 0.95):>12.3f} "
            f"{statistics.median(r):>12.3f} {pct(r, 0.95):>12.3f}"
        )
    ratio_d = statistics.median(detection["reference"]) / max(
        statistics.median(detection["default"]), 1e-6
    )
    ratio_r = statistics.median(recovery["reference"]) / max(
        statistics.median(recovery["default"]), 1e-6
    )
    print(f"ratio reference/default (median): detection {ratio_d:.1f}x, recovery {ratio_r:.1f}x")
    d95, r95 = pct(detection["default"], 0.95), pct(recovery["default"], 0.95)
    print(
        f"targets: detection p95 <= 1 s: {'met' if d95 <= 1 else 'MISSED'} ({d95:.3f}); "
        f"recovery p95 <= 0.2 s: {'met' if r95 <= 0.2 else 'MISSED'} ({r95:.3f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--probe-calls", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.probe_calls))
