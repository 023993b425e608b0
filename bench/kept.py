"""A large population kept in the cluster (issue #18): 100 000 finished
executions, each with a 4 KB output, and the operator starting on them.

Real control plane and Temporal; the operator as a process (MALLOC_ARENA_MAX=2,
as the image sets it). The operator of the environment runs one warm-up
execution (its RSS with one execution is the base), is stopped, and N
executions are written as the operator would have finished them (created,
then their status written Succeeded with the output: many at once over one
aiohttp client). Then a new operator starts and, as soon as it is ready, one
new execution is created. Figures:

  - ready -> first new execution started (WorkflowStarted=True in a watch);
  - start -> every execution in the operator's cache (its /statusz `known`);
  - the LIST requests on executions the start-up made (the API server's own
    counters): a paginated listing is N / page size requests, an unchunked
    one is 1;
  - the operator's RSS once settled and its peak (VmHWM), and per execution
    kept (RSS less the base, over N);
  - then the API server is restarted: the watches resume from a
    resourceVersion the new API server no longer has (410 Gone), kopf lists
    again; the LIST requests of that re-list and the RSS after it.

Usage: python bench/kept.py [--executions 100000] [--output-bytes 4096] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentexec.kube import LIST_CHUNK, Kube  # noqa: E402
from bench.executions import ENV_VARS, Env, bench_env, body, each, rss_mb  # noqa: E402
from tests.support.operator import OperatorProcess  # noqa: E402


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def fill(kube: Kube, ns: str, count: int, output: str, concurrency: int = 48) -> float:
    """``count`` finished executions, written as the operator would have: many
    requests in flight (the API server and etcd are the limit, not a client)."""
    done = time.monotonic()
    names = iter(f"kept-{n}" for n in range(count))
    status = {"status": {"phase": "Succeeded", "output": output}}

    async def writer() -> None:
        for name in names:
            await kube.request("POST", Kube.path(ns), body(name))
            await kube.request(
                "PATCH", Kube.path(ns, name, "status"), status, "application/merge-patch+json"
            )

    async def progress() -> None:
        while True:
            await asyncio.sleep(30)
            print(f"  ... filling, {time.monotonic() - done:.0f} s", flush=True)

    ticker = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(writer() for _ in range(concurrency)))
    finally:
        ticker.cancel()
    return time.monotonic() - done


class StartedWatch:
    """When one execution is first seen WorkflowStarted=True, on a watch of
    that object alone: the bench's watch of the namespace still works through
    the events of writing N executions (N x 4 KB of JSON in this process) and
    would see it late."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.seen = asyncio.Event()
        self.at = 0.0
        path = f"{Kube.path(namespace)}?fieldSelector=metadata.name%3D{name}"
        self._task = asyncio.create_task(self._run(kube, path))

    async def _run(self, kube: Kube, path: str) -> None:
        while True:
            try:
                async for event in kube.watch(path):
                    for cond in (event["object"].get("status") or {}).get("conditions", []):
                        if cond.get("type") == "WorkflowStarted" and cond.get("status") == "True":
                            self.at = time.monotonic()
                            self.seen.set()
                            return
            except Exception:
                await asyncio.sleep(0.1)

    async def wait(self, timeout: float) -> float:
        try:
            await asyncio.wait_for(self.seen.wait(), timeout)
        finally:
            self._task.cancel()
        return self.at


async def lists(env: Env) -> float:
    counts = await asyncio.to_thread(env.plane.request_counts, "agentexecutions")
    return counts.get("LIST", 0.0)


async def until_known(operator: OperatorProcess, count: int, timeout: float) -> float:
    started = time.monotonic()
    while True:
        try:
            known = (await asyncio.to_thread(operator.statusz))["executions"]["known"]
        except Exception:
            known = -1
        if known >= count:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"operator knows {known} of {count} after {timeout} s")
        await asyncio.sleep(2)  # /statusz counts; asked often, it would slow the listing


async def one_run(count: int, output_bytes: int) -> dict[str, float]:
    r: dict[str, float] = {}
    async with bench_env("kept", ENV_VARS) as env:
        kube, ns = env.kube, env.namespace
        assert env.operator.pid is not None
        base = rss_mb(env.operator.pid)
        env.operator.stop()
        # The namespace-wide watch would parse every write below (N x 4 KB):
        # each figure here watches the one object it is about.
        await env.observer.stop()
        r["fill"] = await fill(kube, ns, count, "x" * output_bytes)
        print(f"  {count} executions written in {r['fill']:.0f} s", flush=True)
        lists_before = await lists(env)
        operator = OperatorProcess(
            Path(tempfile.mkdtemp(prefix="bench-kept-")),
            env.plane.kubeconfig,
            env.temporal.address,
            ns,
            {"LOG_LEVEL": "WARNING", "MALLOC_ARENA_MAX": "2", **ENV_VARS},
        )
        launched = time.monotonic()
        operator.start()
        try:
            assert operator.pid is not None
            ready = time.monotonic()
            r["ready"] = ready - launched
            first = StartedWatch(kube, ns, "first-new")
            await asyncio.sleep(0.5)  # the watch is open (counted: created 0.5 s after ready)
            await kube.request("POST", Kube.path(ns), body("first-new"))
            r["first"] = await first.wait(600) - ready
            await until_known(operator, count + 2, 600)
            r["known"] = time.monotonic() - launched
            await asyncio.sleep(5)
            r["lists"] = await lists(env) - lists_before
            r["rss"], r["peak"] = rss_mb(operator.pid), peak_mb(operator.pid)
            r["kb_per"] = (r["rss"] - base) * 1024 / count
            print(
                f"  start: ready {r['ready']:.1f} s after launch; first new execution "
                f"started {r['first']:.2f} s after ready; all {count} known "
                f"{r['known']:.1f} s after launch; {r['lists']:.0f} LIST requests "
                f"(pages of {LIST_CHUNK}); RSS {r['rss']:.0f} MB (peak {r['peak']:.0f} MB, "
                f"{base:.0f} MB with one execution: {r['kb_per']:.2f} KB per execution kept)",
                flush=True,
            )
            # 410 Gone: a new API server has no history before its own start.
            await asyncio.to_thread(env.plane.stop_apiserver)
            await asyncio.to_thread(env.plane.start_apiserver)
            await asyncio.sleep(2)
            # Counters start again with the new API server: wait for the re-list.
            for _ in range(300):
                if await lists(env) >= count / LIST_CHUNK:
                    break
                await asyncio.sleep(1)
            await asyncio.sleep(10)
            r["relists"] = await lists(env)
            r["rss_relist"], r["peak_relist"] = rss_mb(operator.pid), peak_mb(operator.pid)
            after = StartedWatch(kube, ns, "after-relist")
            await asyncio.sleep(0.5)
            created = time.monotonic()
            await kube.request("POST", Kube.path(ns), body("after-relist"))
            r["after_relist"] = await after.wait(120) - created
            print(
                f"  after an API server restart (410 Gone): {r['relists']:.0f} LIST requests; "
                f"RSS {r['rss_relist']:.0f} MB (peak {r['peak_relist']:.0f} MB); "
                f"a new execution created then started {r['after_relist']:.2f} s later",
                flush=True,
            )
        finally:
            operator.stop()
    return r


async def main(count: int, output_bytes: int, repeat: int) -> None:
    runs = []
    for run in range(1, repeat + 1):
        print(f"run {run}/{repeat} (fresh control plane, Temporal and operator)", flush=True)
        runs.append(await one_run(count, output_bytes))
    m = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"\n{count} executions kept, {output_bytes} B output each (median of {len(runs)} runs)")
    print("| figure | median | runs | target |")
    print("|---|---|---|---|")
    print(
        f"| operator RSS, settled (peak) | {m['rss']:.0f} MB ({m['peak']:.0f} MB) "
        f"| {each(runs, 'rss', '.0f')} MB | < 300 MB: {'met' if m['peak'] < 300 else 'MISSED'} |"
    )
    print(
        f"| memory per execution kept | {m['kb_per']:.2f} KB | {each(runs, 'kb_per', '.2f')} KB "
        f"| <= 10 KB: {'met' if m['kb_per'] <= 10 else 'MISSED'} |"
    )
    print(
        f"| start-up LIST requests | {m['lists']:.0f} | {each(runs, 'lists', '.0f')} "
        f"| paginated (> 1): {'met' if m['lists'] > 1 else 'MISSED'} |"
    )
    print(
        f"| re-list after 410: LIST requests, RSS | {m['relists']:.0f}, {m['rss_relist']:.0f} MB "
        f"(peak {m['peak_relist']:.0f}) | {each(runs, 'relists', '.0f')} "
        f"| paginated: {'met' if m['relists'] > 1 else 'MISSED'} |"
    )
    print(
        f"| ready -> first new execution started | {m['first']:.2f} s "
        f"| {each(runs, 'first', '.2f')} s | <= 5 s: {'met' if m['first'] <= 5 else 'MISSED'} |"
    )
    print(
        f"| launch -> ready; -> all known | {m['ready']:.1f} s; {m['known']:.1f} s "
        f"| {each(runs, 'known', '.1f')} s | printed |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--output-bytes", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs; figures are medians")
    args = parser.parse_args()
    asyncio.run(main(args.executions, args.output_bytes, args.repeat))
