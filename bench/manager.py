"""Detection and recovery latency of the Temporal manager, ours vs the reference's,
and what a blip costs with and without hysteresis.

Three managers run side by side in this process against one real Temporal dev
server: the default settings, the same without hysteresis
(TEMPORAL_DOWN_AFTER_SECONDS=0: the first failed probe calls Temporal down),
and the reference system's parameters (15 s probe, 5 s timeout, 1-30 s
backoff). Each outage cycle SIGKILLs the server, waits until every manager
noticed, restarts it, and waits until all reconnected. Each blip cycle
freezes the server (SIGSTOP) for --blip seconds, long enough for a probe in
flight to miss its 1 s deadline, then thaws it.

- detection: SIGKILL -> manager reports disconnected
- recovery: the server answers its first health check (an independent fresh
  client, polled every 20 ms) -> manager reports connected
- blips: how many times each manager told its listeners "disconnected" (each
  such flip makes the controller rewrite every unfinished execution)
- probe cost: one call of the server-wide health check (the old probe),
  DescribeNamespace, and the manager's probe (both at once, under one
  deadline), each timed on a warm client, before the cycles

Usage: python bench/manager.py [--cycles N] [--blips N] [--blip SECONDS] [--probe-calls N]
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
    "down_after": 0.0,  # the reference flipped on one failed probe
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
        "manager probe (both)": lambda: manager.connection.probe.ask(client),
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


def count_flip(flips: dict[str, int], name: str, connected: bool) -> None:
    if not connected:
        flips[name] += 1


def probe_failures(manager: TemporalManager) -> float:
    labels = {"host_port": manager.settings.address, "namespace": manager.settings.namespace}
    value = manager.metrics.registry.get_sample_value(
        "temporal_health_probe_failures_total", labels
    )
    return value or 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(cycles: int, blips: int, blip: float, probe_calls: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    rng = random.Random(7)
    workdir = Path(tempfile.mkdtemp(prefix="bench-manager-"))
    server = TemporalDevServer(workdir)
    server.start()
    costs = await probe_costs(server.address, probe_calls)
    base = TemporalSettings(address=server.address)
    configs = {
        "default": base,
        "no-hyst": dataclasses.replace(base, down_after=0.0),
        "reference": dataclasses.replace(base, **REFERENCE),  # type: ignore[arg-type]
    }
    managers = {name: TemporalManager(s, (), Metrics()) for name, s in configs.items()}
    detection: dict[str, list[float]] = {name: [] for name in managers}
    recovery: dict[str, list[float]] = {name: [] for name in managers}
    flips: dict[str, int] = dict.fromkeys(managers, 0)
    blip_flips = flips
    failed_probes: dict[str, float] = dict.fromkeys(managers, 0.0)
    for name, m in managers.items():
        m.add_listener(lambda state, name=name: count_flip(flips, name, state.connected))
    try:
        for m in managers.values():
            m.start()
        await asyncio.gather(*(wait_state(m, True) for m in managers.values()))
        before = {name: probe_failures(m) for name, m in managers.items()}
        for cycle in range(1, blips + 1):
            await asyncio.sleep(rng.uniform(1.0, 2.0))  # a random phase of the 1 s probe
            server.freeze()
            await asyncio.sleep(blip)
            server.thaw()
            await asyncio.sleep(3.0)  # every manager settled again
            await asyncio.gather(*(wait_state(m, True) for m in managers.values()))
            print(f"blip {cycle}: flips so far {flips}", flush=True)
        for name, m in managers.items():
            failed_probes[name] = probe_failures(m) - before[name]
        blip_flips = dict(flips)  # the outages below flip every manager, as they should
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
    ratio_h = statistics.median(detection["default"]) / max(
        statistics.median(detection["no-hyst"]), 1e-6
    )
    print(f"ratio default/no-hyst (median detection): {ratio_h:.2f}x (the window's price)")
    print()
    print(f"Blips: {blips} freezes of {blip:.2f} s (SIGSTOP/SIGCONT)")
    print(f"{'settings':<10} {'failed probes':>14} {'flips down':>11}")
    for name in managers:
        print(f"{name:<10} {failed_probes[name]:>14.0f} {blip_flips[name]:>11}")
    d95, r95 = pct(detection["default"], 0.95), pct(recovery["default"], 0.95)
    # Detection: probe interval (1 s) + TEMPORAL_DOWN_AFTER_SECONDS (1 s) +
    # the fast re-probe (0.1 s) bound it; the target keeps an execution's
    # "waiting for Temporal" within ~2-3 s of an outage (issue #18).
    print(
        f"targets: detection p95 <= 2.5 s: {'met' if d95 <= 2.5 else 'MISSED'} ({d95:.3f}); "
        f"recovery p95 <= 0.2 s: {'met' if r95 <= 0.2 else 'MISSED'} ({r95:.3f}); "
        f"no flip on a blip: {'met' if blip_flips['default'] == 0 else 'MISSED'} "
        f"({blip_flips['default']} of {blips})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=7)
    parser.add_argument("--blips", type=int, default=10)
    parser.add_argument("--blip", type=float, default=1.5)
    parser.add_argument("--probe-calls", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.cycles, args.blips, args.blip, args.probe_calls))
