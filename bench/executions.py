"""AgentExecutions through the operator: latency, outage recovery, throughput, memory.

Real control plane (etcd + kube-apiserver), real Temporal dev server, the
operator as a process (localenv, tests/support). Figures:

  (a) creation -> WorkflowStarted=True latency, p50/p99 over N executions
      created one by one with Temporal up; beside it, in the same run, the
      bare SDK's own start latency (start_workflow called -> returned) over N
      workflows started one by one;
  (b) M executions created during an outage: Temporal answering -> all started;
      beside it, the same outage again (SIGKILL, as long down, restart) and
      the bare SDK (a client and worker that lived through it) starting M
      workflows at once as soon as Temporal answers -> every start returned;
  (c) K echo executions through the operator, wall time, against a plain SDK
      loop in this process that starts and awaits K workflows running the same
      echo activity (ratio);
      and the API server's own request counters per execution during (c)
      (status writes, other writes, reads, conflicts);
  (d) operator RSS after (c);
  (e) restart with R executions kept, 90 % of them finished: operator ready ->
      first new execution started, the API requests the start-up made, and
      the operator's RSS per execution kept.
  (f) with --policy-rounds P, instead of (a)-(e): P rounds each of (a) and (c)
      without and with an ExecutionPolicy in the namespace (allow-lists, a
      running quota and a token budget that never bind), alternating in one
      environment (ABBA...): what the checks cost (issue #22); and the CPU
      time of one decision with and without it, measured in this process.

Each figure is the median of --repeat runs, each in a fresh environment
(control plane, Temporal, operator); every run's own figures are printed too.

Usage: python bench/executions.py [--latency 200] [--outage 500] [--throughput 1000]
                                  [--restart 10000] [--repeat 3] [--policy-rounds 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from agentexec.kube import GROUP, VERSION, Kube  # noqa: E402
from agentexec.runner.activity import RunnerActivities  # noqa: E402
from agentexec.runner.echo import EchoAgent  # noqa: E402
from bench.baseline import BaselineEcho  # noqa: E402
from localenv.kube import ControlPlane  # noqa: E402
from localenv.temporal import TemporalDevServer, first_answer  # noqa: E402
from tests.support.operator import OperatorProcess  # noqa: E402

# The SDK's own deadline per start (10 s by default) is too short for 1000
# starts at once on a loaded 2-core machine: the baseline would fail, not time.
RPC = timedelta(seconds=120)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Observer:
    """Watches the namespace; records when each execution was first started / done."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.started: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async for event in self.kube.watch(Kube.path(self.namespace)):
                    self._see(event["object"])
            except Exception:
                await asyncio.sleep(0.1)

    def _see(self, obj: dict[str, Any]) -> None:
        name, now = obj["metadata"]["name"], time.monotonic()
        status = obj.get("status") or {}
        for cond in status.get("conditions", []):
            if cond.get("type") == "WorkflowStarted" and cond.get("status") == "True":
                self.started.setdefault(name, now)
        if status.get("phase") in ("Succeeded", "Failed", "Cancelled"):
            self.done.setdefault(name, now)

    async def until(self, seen: dict[str, float], names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(n in seen for n in names):
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in seen]
                raise TimeoutError(f"{len(missing)} not there after {timeout}s: {missing[:5]}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._task.cancel()


def body(
    name: str, message: str = "bench", parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"agent": "echo", "message": message}
    if parameters:
        spec["parameters"] = parameters
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentExecution",
        "metadata": {"name": name},
        "spec": spec,
    }


async def create_many(
    kube: Kube, ns: str, names: list[str], parameters: dict[str, Any] | None = None
) -> None:
    sem = asyncio.Semaphore(20)

    async def one(name: str) -> None:
        async with sem:
            await kube.request("POST", Kube.path(ns), body(name, parameters=parameters))

    await asyncio.gather(*(one(n) for n in names))


async def create_running(env: Env, names: list[str], timeout: float = 1800) -> None:
    """Executions that start and stay Running: their agents wait on a task
    queue no runner polls (the operator needs AGENTEXEC_NO_RUNNER_SECONDS
    longer than the bench)."""
    sem = asyncio.Semaphore(20)

    async def create(name: str) -> None:
        unserved = body(name)
        unserved["spec"]["taskQueue"] = "nobody-serves-this"
        async with sem:
            await env.kube.request("POST", Kube.path(env.namespace), unserved)

    await asyncio.gather(*(create(n) for n in names))
    await env.observer.until(env.observer.started, names, timeout)


async def started_one_by_one(env: Env, names: list[str], timeout: float) -> list[float]:
    """Create each execution after the previous one started; create -> started latencies."""
    latencies = []
    for name in names:
        t0 = time.monotonic()
        await env.kube.request("POST", Kube.path(env.namespace), body(name))
        await env.observer.until(env.observer.started, [name], timeout)
        latencies.append(env.observer.started[name] - t0)
    return latencies


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def baseline(address: str, count: int) -> float:
    async with sdk_worker(address) as (client, queue):
        started = time.monotonic()
        handles = await asyncio.gather(
            *(
                client.start_workflow(
                    BaselineEcho.run, f"m{n}", id=f"{queue}-{n}", task_queue=queue, rpc_timeout=RPC
                )
                for n in range(count)
            )
        )
        await asyncio.gather(*(h.result() for h in handles))
        return time.monotonic() - started


@contextlib.asynccontextmanager
async def sdk_worker(address: str) -> AsyncIterator[tuple[Client, str]]:
    """A bare-SDK client and a worker running BaselineEcho on a queue of its own."""
    client = await Client.connect(address)
    queue = f"baseline-{uuid.uuid4()}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[BaselineEcho],
        activities=[RunnerActivities({"echo": EchoAgent()}).run_agent],
    ):
        yield client, queue


async def sdk_start_latency(address: str, count: int) -> list[float]:
    """The baseline of (a): the bare SDK's own start latency (start_workflow
    called -> returned), ``count`` workflows one after the other."""
    latencies = []
    async with sdk_worker(address) as (client, queue):
        for n in range(count):
            t0 = time.monotonic()
            await client.start_workflow(
                BaselineEcho.run, f"m{n}", id=f"{queue}-{n}", task_queue=queue, rpc_timeout=RPC
            )
            latencies.append(time.monotonic() - t0)
    return latencies


async def sdk_after_outage(temporal: TemporalDevServer, count: int, down: float) -> float:
    """The baseline of (b): the same outage again (SIGKILL, ``down`` seconds,
    restart); as soon as Temporal answers, the bare SDK (a client and a worker
    that lived through the outage) starts ``count`` workflows at once.
    Temporal answering -> every start returned."""
    async with sdk_worker(temporal.address) as (client, queue):
        temporal.kill()
        await asyncio.sleep(down)
        temporal.start(wait=False)
        answered = await first_answer(temporal.address)
        await asyncio.gather(
            *(
                client.start_workflow(
                    BaselineEcho.run, f"m{n}", id=f"{queue}-{n}", task_queue=queue, rpc_timeout=RPC
                )
                for n in range(count)
            )
        )
        return time.monotonic() - answered


@dataclass
class Env:
    plane: ControlPlane
    temporal: TemporalDevServer
    operator: OperatorProcess
    kube: Kube
    observer: Observer
    namespace: str
    workdir: Path


@contextlib.asynccontextmanager
async def bench_env(
    name: str,
    operator_env: dict[str, str],
    before_warm_up: Callable[[Env], None] | None = None,
    temporal_args: tuple[str, ...] = (),
) -> AsyncIterator[Env]:
    """Control plane, Temporal, the CRD, a namespace, the operator (with
    MALLOC_ARENA_MAX=2, as the image sets it), a client and a watch.
    ``before_warm_up(env)`` runs once the operator is ready (an operator
    without its in-process runner needs a runner process for the warm-up
    execution)."""
    logging.basicConfig(level=logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    plane = ControlPlane(work / "kube")
    temporal = TemporalDevServer(work / "temporal", extra_args=temporal_args)
    plane.start()
    temporal.start()
    plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    plane.kubectl("wait", "--for=condition=Established", "crd/agentexecutions.agentexec.io")
    plane.kubectl("create", "namespace", name)
    operator = OperatorProcess(
        work / "operator",
        plane.kubeconfig,
        temporal.address,
        name,
        {"LOG_LEVEL": "WARNING", "MALLOC_ARENA_MAX": "2", **operator_env},
    )
    operator.start()
    os.environ["KUBECONFIG"] = str(plane.kubeconfig)
    kube = await Kube.connect()
    observer = Observer(kube, name)
    env = Env(plane, temporal, operator, kube, observer, name, work)
    try:
        if before_warm_up is not None:
            before_warm_up(env)
        # Figures start from a settled operator: one warm-up execution has run
        # (just after the CRD is established the API server answers the first
        # list with "storage is (re)initializing" and kopf retries a second later).
        await kube.request("POST", Kube.path(name), body("warm-up"))
        await observer.until(observer.done, ["warm-up"], 60)
        yield env
    finally:
        await observer.stop()
        await kube.close()
        operator.stop()
        temporal.stop()
        plane.stop()


ENV_VARS = {"AGENTEXEC_CONDITION_SYNC_SECONDS": "2", "AGENTEXEC_SWEEP_SECONDS": "30"}


async def main(
    latency_n: int,
    outage_n: int,
    throughput_n: int,
    restart_n: int,
    repeat: int,
    policy_rounds: int = 0,
) -> None:
    runs: list[dict[str, float]] = []
    for run in range(1, repeat + 1):
        print(f"run {run}/{repeat} (fresh control plane, Temporal and operator)", flush=True)
        if policy_rounds:
            async with bench_env("bench", ENV_VARS) as env:
                runs.append(await measure_policy(env, latency_n, throughput_n, policy_rounds))
            continue
        async with bench_env("bench", ENV_VARS) as env:
            r = await measure(env, latency_n, outage_n, throughput_n)
        if restart_n:
            async with bench_env("restart", ENV_VARS) as env:
                r.update(await measure_restart(env, restart_n))
        runs.append(r)
    if policy_rounds:
        report_policy(runs, latency_n, throughput_n, policy_rounds)
    else:
        report(runs, latency_n, outage_n, throughput_n, restart_n)


def decision_cost(policy: dict[str, Any] | None, held: int = 1000, n: int = 2000) -> float:
    """Microseconds per decision of an unstarted execution (tenancy and
    planner, what reconcile runs before it asks for a start turn) in a
    namespace holding ``held`` unfinished executions."""
    from agentexec import planner
    from agentexec.cache import ExecutionCache
    from agentexec.decisions import Config, Observed
    from agentexec.policy import PolicyCache
    from agentexec.status import Connection
    from agentexec.tenancy import Tenancy

    cache, policies = ExecutionCache(), PolicyCache()
    if policy is not None:
        policies.put({**policy, "metadata": {"name": "limits", "namespace": "ns"}})
    bodies = []
    for i in range(held):
        body = {
            "metadata": {"name": f"e{i}", "namespace": "ns", "uid": f"u{i}",
                         "resourceVersion": "1", "creationTimestamp": "2026-12-03T10:00:00Z"},
            "spec": {"agent": "echo", "message": "hi"},
            "status": {},
        }  # fmt: skip
        cache.put(("ns", f"e{i}"), body)
        bodies.append(body)
    tenancy = Tenancy(cache, policies)
    conn = Connection(True, "Connected", "connected")
    now = datetime.now(UTC)
    started = time.perf_counter()
    for i in range(n):
        body = bodies[i % held]
        key = ("ns", f"e{i % held}")
        found, quota = tenancy.observe(key, body)
        planner.decide(Observed(body=body, conn=conn, now=now, config=Config(),
                                policies=found, quota=quota, agent_read=True))  # fmt: skip
    return (time.perf_counter() - started) / n * 1e6


POLICY = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "ExecutionPolicy",
    "metadata": {"name": "limits"},
    "spec": {
        "allowed": {"agentTypes": ["echo"]},
        "concurrency": {"maxRunning": 100_000},
        "budget": {"tokens": 10**12, "period": "Day"},
    },
}


async def measure_policy(
    env: Env, latency_n: int, throughput_n: int, rounds: int
) -> dict[str, float]:
    """(f) ``rounds`` rounds each way of (a) and (c), without and with an
    ExecutionPolicy, alternating in this environment (the machine's load
    drifts by more than the difference between two runs): ABBA order, so a
    drift during the rounds weighs on both sides alike."""
    kube, observer, ns = env.kube, env.observer, env.namespace
    env.plane.kubectl("wait", "--for=condition=Established", "crd/executionpolicies.agentexec.io")
    policy = json.dumps(POLICY)
    order = [n % 4 in (1, 2) for n in range(2 * rounds)]  # off, on, on, off, ...
    measured: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for n, with_policy in enumerate(order):
        verb = "apply" if with_policy else "delete"
        env.plane.kubectl(verb, "-n", ns, "-f", "-", stdin=policy, check=with_policy)
        await asyncio.sleep(1)  # the operator's watch delivers it
        lat = await started_one_by_one(env, [f"f{n}-lat-{i}" for i in range(latency_n)], 30)
        names = [f"f{n}-tp-{i}" for i in range(throughput_n)]
        t0 = time.monotonic()
        await create_many(kube, ns, names)
        await observer.until(observer.done, names, 600)
        measured[with_policy].append((pct(lat, 0.99), time.monotonic() - t0))
        print(
            f"    round {n}: policy {'on ' if with_policy else 'off'}: (a) p99 "
            f"{measured[with_policy][-1][0] * 1000:.0f} ms, (c) "
            f"{measured[with_policy][-1][1]:.1f} s",
            flush=True,
        )
    r: dict[str, float] = {}
    for with_policy, label in ((False, "f_off"), (True, "f_on")):
        r[f"{label}_a99"] = statistics.median(x[0] for x in measured[with_policy])
        r[f"{label}_c_op"] = statistics.median(x[1] for x in measured[with_policy])
    r["f_c"] = r["f_on_c_op"] / r["f_off_c_op"]
    # The CPU the checks take, measured directly (the rounds above are at the
    # mercy of the machine's load): one decision of an unstarted execution
    # with and without the policy, as a share of (c)'s time per execution.
    costs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(5):  # alternating; the least of each is the least disturbed
        costs[False].append(decision_cost(policy=None))
        costs[True].append(decision_cost(POLICY))
    r["f_us_off"], r["f_us_on"] = min(costs[False]), min(costs[True])
    per_execution = r["f_off_c_op"] / throughput_n
    r["f_cpu_share"] = 3 * (r["f_us_on"] - r["f_us_off"]) / 1e6 / per_execution
    print(
        f"(f) {throughput_n} echo executions and {latency_n} one by one, {rounds} rounds each "
        f"way, alternating: with an ExecutionPolicy (c) {r['f_on_c_op']:.1f} s vs "
        f"{r['f_off_c_op']:.1f} s without ({(r['f_c'] - 1) * 100:+.1f} %), (a) p99 "
        f"{r['f_on_a99'] * 1000:.0f} ms vs {r['f_off_a99'] * 1000:.0f} ms; a decision costs "
        f"{r['f_us_on']:.0f} us with it, {r['f_us_off']:.0f} us without: "
        f"{r['f_cpu_share'] * 100:.3f} % of (c)'s time per execution at three decisions each",
        flush=True,
    )
    return r


async def measure(env: Env, latency_n: int, outage_n: int, throughput_n: int) -> dict[str, float]:
    kube, observer, ns = env.kube, env.observer, env.namespace
    temporal, operator = env.temporal, env.operator
    r: dict[str, float] = {}
    # (a) one at a time, Temporal up
    lat = await started_one_by_one(env, [f"lat-{n}" for n in range(latency_n)], 30)
    r["a50"], r["a99"] = statistics.median(lat), pct(lat, 0.99)
    sdk = await sdk_start_latency(temporal.address, latency_n)
    r["a50_sdk"], r["a99_sdk"] = statistics.median(sdk), pct(sdk, 0.99)
    r["a99_ratio"] = r["a99"] / r["a99_sdk"]
    print(
        f"(a) create -> WorkflowStarted over {latency_n}: "
        f"p50 {r['a50'] * 1000:.0f} ms, p99 {r['a99'] * 1000:.0f} ms; bare SDK start "
        f"p50 {r['a50_sdk'] * 1000:.1f} ms, p99 {r['a99_sdk'] * 1000:.1f} ms; "
        f"p99 ratio {r['a99_ratio']:.1f}",
        flush=True,
    )

    # (b) created during an outage
    temporal.kill()
    down = time.monotonic()
    names = [f"outage-{n}" for n in range(outage_n)]
    await create_many(kube, ns, names)
    await asyncio.sleep(3)
    down = time.monotonic() - down
    temporal.start(wait=False)
    answered = await first_answer(temporal.address)
    await observer.until(observer.started, names, 300)
    r["b"] = max(observer.started[n] for n in names) - answered
    await observer.until(observer.done, names, 300)
    # The same outage again, the bare SDK starting as many right after it.
    r["b_sdk"] = await sdk_after_outage(temporal, outage_n, down)
    r["b_ratio"] = r["b"] / r["b_sdk"]
    print(
        f"(b) {outage_n} created during an outage: all started {r['b']:.2f} s "
        f"after Temporal answered; the bare SDK after the same outage "
        f"({down:.1f} s down) {r['b_sdk']:.2f} s; ratio {r['b_ratio']:.1f}",
        flush=True,
    )

    # (c) throughput through the operator vs the bare SDK, in the same run
    names = [f"tp-{n}" for n in range(throughput_n)]
    before = env.plane.request_counts("agentexecutions")
    t0 = time.monotonic()
    await create_many(kube, ns, names)
    await observer.until(observer.done, names, 600)
    r["c_op"] = time.monotonic() - t0
    after = env.plane.request_counts("agentexecutions")

    def per(key: str) -> float:
        return (after.get(key, 0.0) - before.get(key, 0.0)) / throughput_n

    r["c_status_writes"] = per("PATCH/status")
    r["c_other_writes"] = per("PATCH")
    r["c_reads"] = per("GET") + per("GET/status")
    r["c_conflicts"] = per("code=409")
    print(
        f"(c) API requests per execution: {r['c_status_writes']:.2f} status writes, "
        f"{r['c_other_writes']:.2f} other writes (finalizer), {r['c_reads']:.2f} reads, "
        f"{r['c_conflicts']:.2f} conflicts",
        flush=True,
    )
    r["c_sdk"] = await baseline(temporal.address, throughput_n)
    r["c"] = r["c_op"] / r["c_sdk"]
    print(
        f"(c) {throughput_n} echo executions: operator {r['c_op']:.1f} s, "
        f"bare SDK {r['c_sdk']:.1f} s, ratio {r['c']:.2f}",
        flush=True,
    )

    # (d) memory
    assert operator.pid is not None
    r["d"] = rss_mb(operator.pid)
    total = latency_n + outage_n + throughput_n
    print(f"(d) operator RSS with {total} executions: {r['d']:.0f} MB", flush=True)
    return r


async def measure_restart(env: Env, total: int) -> dict[str, float]:
    """(e) R executions kept, 90 % finished: restart, then one new execution."""
    kube, ns, plane = env.kube, env.namespace, env.plane
    assert env.operator.pid is not None
    rss_empty = rss_mb(env.operator.pid)  # the same operator with one execution
    env.operator.stop()
    finished = int(total * 0.9)
    names = [f"kept-{n}" for n in range(total)]
    await create_many(kube, ns, names)
    sem = asyncio.Semaphore(20)

    async def finish(name: str) -> None:
        # Finished before the restart: written as the operator would have.
        async with sem:
            await kube.request(
                "PATCH",
                Kube.path(ns, name, "status"),
                {"status": {"phase": "Succeeded", "output": "done"}},
                "application/merge-patch+json",
            )

    await asyncio.gather(*(finish(n) for n in names[:finished]))
    before = plane.request_counts("agentexecutions")
    operator = OperatorProcess(
        Path(tempfile.mkdtemp(prefix="bench-restart-")),
        plane.kubeconfig,
        env.temporal.address,
        ns,
        {"LOG_LEVEL": "WARNING", "MALLOC_ARENA_MAX": "2", **ENV_VARS},
    )
    operator.start()
    try:
        ready = time.monotonic()
        await kube.request("POST", Kube.path(ns), body("after-restart"))
        await env.observer.until(env.observer.started, ["after-restart"], 120)
        r = {"e_first": env.observer.started["after-restart"] - ready}
        await env.observer.until(env.observer.started, names[finished:], 300)
        await asyncio.sleep(2)
        after = plane.request_counts("agentexecutions")
        r["e_writes"] = sum(
            after.get(k, 0.0) - before.get(k, 0.0) for k in after if k.startswith("PATCH")
        )
        r["e_reads"] = sum(
            after.get(k, 0.0) - before.get(k, 0.0) for k in after if k.startswith(("GET", "LIST"))
        )
        assert operator.pid is not None
        r["e_rss"] = rss_mb(operator.pid)
        r["e_kb_per"] = (r["e_rss"] - rss_empty) * 1024 / (total + 1)
        print(
            f"(e) restart with {total} kept ({finished} finished): first new execution started "
            f"{r['e_first']:.2f} s after ready; start-up API requests on executions: "
            f"{r['e_writes']:.0f} writes (for {total - finished + 1} unfinished), "
            f"{r['e_reads']:.0f} reads; RSS {r['e_rss']:.0f} MB "
            f"({rss_empty:.0f} MB with one execution: {r['e_kb_per']:.1f} KB per execution kept)",
            flush=True,
        )
        return r
    finally:
        operator.stop()


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def each(runs: list[dict[str, float]], key: str, fmt: str, scale: float = 1.0) -> str:
    """Every run's value of one figure, in run order."""
    return ", ".join(format(run[key] * scale, fmt) for run in runs)


def report(
    runs: list[dict[str, float]], latency_n: int, outage_n: int, throughput_n: int, restart_n: int
) -> None:
    m = {key: median_of(runs, key) for key in runs[0]}
    total = latency_n + outage_n + throughput_n
    print(f"\nAgentExecutions through the operator (median of {len(runs)} runs)")
    print("| figure | median | runs | target |")
    print("|---|---|---|---|")
    print(
        f"| (a) create -> WorkflowStarted, {latency_n} one by one "
        f"| p50 {m['a50'] * 1000:.0f} ms, p99 {m['a99'] * 1000:.0f} ms "
        f"| p99 {each(runs, 'a99', '.0f', 1000)} ms "
        f"| p99 <= 100 ms: {'met' if m['a99'] <= 0.1 else 'MISSED'} |"
    )
    print(
        f"| (a) bare SDK start latency, same {latency_n} one by one, same run "
        f"| p50 {m['a50_sdk'] * 1000:.1f} ms, p99 {m['a99_sdk'] * 1000:.1f} ms "
        f"| p99 {each(runs, 'a99_sdk', '.1f', 1000)} ms; ratio {each(runs, 'a99_ratio', '.1f')} "
        f"| p99 ratio {m['a99_ratio']:.1f} |"
    )
    print(
        f"| (b) {outage_n} created during an outage, all started after Temporal answered "
        f"| {m['b']:.2f} s | {each(runs, 'b', '.2f')} s "
        f"| <= 5 s: {'met' if m['b'] <= 5 else 'MISSED'} |"
    )
    print(
        f"| (b) bare SDK starting {outage_n} right after the same outage, same run "
        f"| {m['b_sdk']:.2f} s | {each(runs, 'b_sdk', '.2f')} s; "
        f"ratio {each(runs, 'b_ratio', '.1f')} | ratio {m['b_ratio']:.1f} |"
    )
    print(
        f"| (c) {throughput_n} echo executions, operator / bare SDK "
        f"| ratio {m['c']:.2f} ({m['c_op']:.1f} s / {m['c_sdk']:.1f} s) "
        f"| {each(runs, 'c', '.2f')} | <= 1.5: {'met' if m['c'] <= 1.5 else 'MISSED'} |"
    )
    print(
        f"| (c) API requests per execution | {m['c_status_writes']:.2f} status writes, "
        f"{m['c_other_writes']:.2f} other writes, {m['c_reads']:.2f} reads, "
        f"{m['c_conflicts']:.2f} conflicts | {each(runs, 'c_status_writes', '.2f')} "
        f"| floor: 2 status writes, 0 reads, 0 conflicts |"
    )
    print(
        f"| (d) operator RSS after {total} executions | {m['d']:.0f} MB "
        f"| {each(runs, 'd', '.0f')} MB | <= 200 MB: {'met' if m['d'] <= 200 else 'MISSED'} |"
    )
    if restart_n:
        print(
            f"| (e) restart, {restart_n} kept (90 % finished): ready -> first new started "
            f"| {m['e_first']:.2f} s; {m['e_writes']:.0f} writes, {m['e_reads']:.0f} reads; "
            f"RSS {m['e_rss']:.0f} MB | {each(runs, 'e_first', '.2f')} s "
            f"| <= 5 s: {'met' if m['e_first'] <= 5 else 'MISSED'} |"
        )
        print(
            f"| (e) memory per execution kept | {m['e_kb_per']:.1f} KB "
            f"| {each(runs, 'e_kb_per', '.1f')} KB "
            f"| <= 10 KB: {'met' if m['e_kb_per'] <= 10 else 'MISSED'} |"
        )


def report_policy(
    runs: list[dict[str, float]], latency_n: int, throughput_n: int, rounds: int
) -> None:
    m = {key: median_of(runs, key) for key in runs[0]}
    print(f"\n(f) with an ExecutionPolicy vs without (median of {len(runs)} runs, "
          f"{rounds} alternating rounds each way in each)")  # fmt: skip
    print("| figure | with | without | runs (with / without) | target |")
    print("|---|---|---|---|---|")
    print(
        f"| (c) {throughput_n} echo executions | {m['f_on_c_op']:.1f} s | {m['f_off_c_op']:.1f} s "
        f"| {each(runs, 'f_c', '.3f')} | <= +5 %: "
        f"{'met' if m['f_c'] <= 1.05 else 'MISSED'} ({(m['f_c'] - 1) * 100:+.1f} %) |"
    )
    print(
        f"| (a) p99, {latency_n} one by one | {m['f_on_a99'] * 1000:.0f} ms "
        f"| {m['f_off_a99'] * 1000:.0f} ms | {each(runs, 'f_on_a99', '.0f', 1000)} / "
        f"{each(runs, 'f_off_a99', '.0f', 1000)} ms | no change beyond noise |"
    )
    print(
        f"| one decision (CPU, in process) | {m['f_us_on']:.0f} us | {m['f_us_off']:.0f} us "
        f"| {each(runs, 'f_us_on', '.0f')} / {each(runs, 'f_us_off', '.0f')} us "
        f"| {m['f_cpu_share'] * 100:.3f} % of (c) per execution |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--outage", type=int, default=500)
    parser.add_argument("--throughput", type=int, default=1000)
    parser.add_argument("--restart", type=int, default=10000, help="0 skips (e)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs; figures are medians")
    parser.add_argument(
        "--policy-rounds", type=int, default=0, help="> 0: only (f), in so many rounds each way"
    )
    args = parser.parse_args()
    asyncio.run(
        main(
            args.latency,
            args.outage,
            args.throughput,
            args.restart,
            args.repeat,
            args.policy_rounds,
        )
    )
