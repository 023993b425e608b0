"""One Temporal flap under N unfinished executions (issue #18, failure 8).

N executions run (their agents wait on a queue no runner serves, so they stay
Running). Temporal is then killed and started again. Figures:
  - from Temporal answering again until every execution's TemporalConnected
    condition is True again (the watch's view);
  - the status writes the flap cost, and the most in any one second, against
    the configured pace (AGENTEXEC_CONDITION_SYNC_RATE);
  - how many executions were written False meanwhile (what the down walk reached).

Usage: python bench/flap.py [--executions 10000] [--rate 500] [--down 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentexec.kube import Kube  # noqa: E402
from bench.executions import bench_env, create_running  # noqa: E402
from localenv.temporal import first_answer  # noqa: E402


class Connections:
    """TemporalConnected of every execution, as the watch shows it."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.connected: dict[str, bool] = {}
        self.went_false: set[str] = set()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async for event in self.kube.watch(Kube.path(self.namespace)):
                    self.see(event["object"])
            except Exception:
                await asyncio.sleep(0.1)

    def see(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        for cond in (obj.get("status") or {}).get("conditions", []):
            if cond.get("type") == "TemporalConnected":
                up = cond.get("status") == "True"
                self.connected[name] = up
                if not up:
                    self.went_false.add(name)

    async def stop(self) -> None:
        self._task.cancel()


async def seed(kube: Kube, namespace: str, watch: Connections) -> None:
    """Every execution's condition as it is now (a paginated LIST): the watch
    only reports changes from here on."""
    token = ""
    while True:
        page = await kube.request(
            "GET", f"{Kube.path(namespace)}?limit=500" + (f"&continue={token}" if token else "")
        )
        for obj in page.get("items", []):
            watch.see(obj)
        token = page.get("metadata", {}).get("continue") or ""
        if not token:
            return


async def main(count: int, rate: float, down: float) -> None:
    env_vars = {
        "AGENTEXEC_NO_RUNNER_SECONDS": "3600",
        "AGENTEXEC_CONDITION_SYNC_RATE": str(rate),
        "AGENTEXEC_RECONCILE_WORKERS": "16",
    }
    async with bench_env("flap", env_vars) as env:
        names = [f"f-{n}" for n in range(count)]
        await create_running(env, names, 3600)
        watch = Connections(env.kube, env.namespace)
        await seed(env.kube, env.namespace, watch)
        before = env.plane.request_counts("agentexecutions").get("PATCH/status", 0.0)
        samples: list[tuple[float, float]] = []
        sampling = True

        async def sample() -> None:
            while sampling:
                counts = await asyncio.to_thread(env.plane.request_counts, "agentexecutions")
                samples.append((time.monotonic(), counts.get("PATCH/status", 0.0)))
                await asyncio.sleep(1)

        sampler = asyncio.create_task(sample())
        env.temporal.kill()
        await asyncio.sleep(down)
        env.temporal.start(wait=False)
        answered = await first_answer(env.temporal.address)
        deadline = answered + 300
        while not (len(watch.connected) >= count and all(watch.connected.get(n) for n in names)):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        right = time.monotonic() - answered
        await asyncio.sleep(3)
        sampling = False
        await sampler
        after = env.plane.request_counts("agentexecutions").get("PATCH/status", 0.0)
        peak = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples))
        await watch.stop()
        wrong = sum(1 for n in names if not watch.connected.get(n))
        print(f"  (seen {len(watch.connected)} of {count}; {wrong} not True at the end)")
        print(f"{count} unfinished executions, Temporal down {down:.0f} s, pace {rate:g}/s")
        still = f" (NOT: {wrong} still wrong)" if wrong else ""
        print(f"  every TemporalConnected right again {right:.1f} s after Temporal answered{still}")
        print(f"  written False meanwhile: {len(watch.went_false)}")
        print(
            f"  status writes for the flap: {after - before:.0f} "
            f"({(after - before) / count:.2f} per execution), peak {peak:.0f}/s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--down", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.executions, args.rate, args.down))
