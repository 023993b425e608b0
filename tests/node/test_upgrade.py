"""The upgrade from the previous release to this one, and the rollback, with
executions in flight, as a user runs them: both charts from the registry by
digest, both images from the registry.

The previous release (PREVIOUS_RELEASE at PREVIOUS_RELEASE_COMMIT in
hack/versions.env) is built from its commit: its chart as it was, its source
in this checkout's Dockerfile. Temporal keeps its database across restarts
here (a production Temporal does), so that executions survive it being down.

1. 0.1.0 installed; executions finished, running (long agents) and waiting
   (created while Temporal is down);
2. the upgrade exactly as CHANGELOG.md's "Upgrading from 0.1.0" says (its
   shell commands are run as written), Temporal back while it rolls out:
   every execution finishes once, running workflows replay on the new
   workers, the CRDs are the new ones and the release's own;
3. `helm rollback` to 0.1.0 with executions of 0.2.0 running: those wait
   (0.1.0's workflow code cannot replay 0.2.0's attempt loop; CHANGELOG.md
   says so), new ones run on 0.1.0;
4. back to 0.2.0 (`helm upgrade`, as CHANGELOG.md says): the waiting ones
   finish, once, on 0.2.0's workers.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.client import Client

from agentexec.status import workflow_id
from localenv import release
from localenv.binaries import ROOT
from localenv.docker import DockerEngine
from localenv.helm import Helm
from localenv.registry import Pushed, Registry
from tests.e2e import aex
from tests.node import apps
from tests.support.report import SUMMARY
from tests.support.waiting import eventually

pytestmark = pytest.mark.node

WORK = "upgrade-work"
CRDS = ("agentexecutions.agentexec.io", "agents.agentexec.io")
# CRDs of 0.2.0 that 0.1.0 did not have: gone before 0.1.0 is installed.
NEW_CRDS = ("agentapprovals.agentexec.io",)
KOPF_CRDS = ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")


def changelog_commands(version: str, since: str) -> list[str]:
    """The shell commands of CHANGELOG.md's "Upgrading from <since>" under
    [<version>], continuation lines joined."""
    text = (ROOT / "CHANGELOG.md").read_text()
    section = release.changelog_sections(text)[version]
    upgrading = section.split(f"### Upgrading from {since}", 1)[1].split("\n### ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", upgrading, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip()]
    return commands


class Releases:
    """The release under test, installed from one chart or another."""

    def __init__(self, cluster: apps.Cluster, helm: Helm) -> None:
        self.cluster = cluster
        self.helm = helm
        self.temporal = ""

    def helm_run(self, *args: str, timeout: float = 360) -> str:
        done = self.helm.run(*args, check=False, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(
                f"helm {args[0]} failed: {done.stderr}\n{apps.diagnose(self.cluster)}"
            )
        return str(done.stdout)

    def executions(self) -> list[dict[str, Any]]:
        return aex.list_all(self.cluster, WORK)  # type: ignore[arg-type]

    async def wait_phase(self, names: list[str], phase: str, timeout: float = 120) -> None:
        wanted = set(names)
        await eventually(
            self.executions,
            lambda objs: wanted <= {o["metadata"]["name"] for o in objs if aex.phase(o) == phase},
            timeout=timeout,
            what=f"{sorted(wanted)} {phase}",
        )

    async def all_succeed_once(self, names: list[str], timeout: float = 240) -> dict[str, Any]:
        """Each Succeeded with its own output, one workflow run each; returns
        name -> object."""
        await self.wait_phase(names, "Succeeded", timeout)
        mine = {
            o["metadata"]["name"]: o for o in self.executions() if o["metadata"]["name"] in names
        }
        assert {n: o["status"]["output"] for n, o in mine.items()} == {n: n for n in names}
        runs = {n: await apps.workflow_runs(self.temporal, WORK, o) for n, o in mine.items()}
        assert set(runs.values()) == {1}, runs
        return mine

    async def workflow_task_failures(self, obj: dict[str, Any]) -> list[tuple[str, str]]:
        """(worker identity, failure message) of each failed workflow task of
        the execution's workflow (a worker whose code cannot replay it)."""
        client = await Client.connect(self.temporal)
        wid = workflow_id(WORK, obj["metadata"]["name"], obj["metadata"]["uid"])
        history = await client.get_workflow_handle(wid).fetch_history()
        return [
            (e.workflow_task_failed_event_attributes.identity,
             e.workflow_task_failed_event_attributes.failure.message)
            for e in history.events
            if e.HasField("workflow_task_failed_event_attributes")
        ]  # fmt: skip

    async def workers_of(self, obj: dict[str, Any]) -> list[str]:
        """The identities of the workers that completed the workflow's tasks,
        in order (a worker's identity is pid@hostname: its pod's name)."""
        client = await Client.connect(self.temporal)
        wid = workflow_id(WORK, obj["metadata"]["name"], obj["metadata"]["uid"])
        history = await client.get_workflow_handle(wid).fetch_history()
        return [
            e.workflow_task_completed_event_attributes.identity
            for e in history.events
            if e.HasField("workflow_task_completed_event_attributes")
        ]


def pods_by_image(cluster: apps.Cluster) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for pod in apps.operator_pods(cluster):
        found.setdefault(pod["spec"]["containers"][0]["image"], set()).add(pod["metadata"]["name"])
    return found


@pytest.fixture(scope="module")
def previous(
    docker_engine: DockerEngine, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The previous release's chart (oci://, by digest) and image, in the registry."""
    version, commit = release.previous_release()
    started = time.monotonic()
    local = release.previous_image(docker_engine)
    work = tmp_path_factory.mktemp("previous")
    archive = release.save_oci_archive(docker_engine, local, work / "image.oci.tar", version)
    image = registry.push_archive(archive, "agentexec-operator", version)
    chart = registry.push_chart(release.previous_chart(work))
    SUMMARY.append(
        f"upgrade: {version} ({commit[:7]}) image and chart in {time.monotonic() - started:.1f} s"
    )
    return {"version": version, "image": image, "chart": chart}


@pytest.fixture(scope="module")
def releases(
    cluster: apps.Cluster,
    registry_images: dict[str, Pushed],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Releases]:
    """A clean slate (no CRD of ours left by earlier modules: the upgrade must
    meet the CRD as 0.1.0 left it) and a Temporal that keeps its data."""
    for name in CRDS:
        listed = cluster.kubectl("get", name, "-A", "-o", "json", check=False)
        for obj in json.loads(listed.stdout)["items"] if listed.returncode == 0 else []:
            cluster.kubectl(
                "patch", name, obj["metadata"]["name"], "-n", obj["metadata"]["namespace"],
                "--type=merge", "-p", '{"metadata": {"finalizers": null}}', check=False,
            )  # fmt: skip
    cluster.kubectl(
        "delete", "crd", *CRDS, *NEW_CRDS, *KOPF_CRDS, "--ignore-not-found", "--wait=true"
    )
    db = tmp_path_factory.mktemp("temporal-db")
    manifests = apps.temporal_manifests(registry_images["temporal"].ref, db_dir=str(db))
    cluster.kubectl("apply", "-f", "-", stdin=manifests)
    cluster.kubectl(
        "rollout", "status", "-n", apps.TEMPORAL_NAMESPACE, "deployment/temporal", "--timeout=180s"
    )
    for ns in (apps.OPERATOR_NAMESPACE, WORK):
        cluster.kubectl("create", "namespace", ns, check=False)
    helm = Helm(cluster, tmp_path_factory.mktemp("helm"))  # type: ignore[arg-type]
    rel = Releases(cluster, helm)
    rel.temporal = apps.temporal_address(cluster)
    yield rel
    helm.run("uninstall", apps.RELEASE, "-n", apps.OPERATOR_NAMESPACE, "--wait", check=False)


def run_changelog_command(cluster: apps.Cluster, command: str) -> None:
    words = shlex.split(
        command.replace("RELEASE", apps.RELEASE).replace("NAMESPACE", apps.OPERATOR_NAMESPACE)
    )
    assert words[0] == "kubectl", f"a step the test cannot run: {command}"
    cluster.kubectl(*words[1:])


async def test_upgrade_and_rollback_with_executions_in_flight(
    cluster: apps.Cluster,
    releases: Releases,
    previous: dict[str, Any],
    registry_images: dict[str, Pushed],
    chart_ref: str,
) -> None:
    rel = releases
    old: Pushed = previous["image"]
    new: Pushed = registry_images["operator"]
    # 1. The previous release, and work in every state.
    started = time.monotonic()
    rel.helm_run(
        "install", apps.RELEASE, previous["chart"], "--plain-http",
        "-n", apps.OPERATOR_NAMESPACE, "--set", f"image.repository={old.repository}",
        "--set", f"image.tag={old.tag}", "--wait", "--timeout", "180s",
    )  # fmt: skip
    [old_pod] = pods_by_image(cluster)[f"{old.repository}:{old.tag}"]
    finished = ["done-0", "done-1"]
    apps.create_executions(cluster, WORK, finished)
    await rel.all_succeed_once(finished, timeout=120)
    long = [f"long-{i}" for i in range(4)]
    apps.create_executions(cluster, WORK, long, delaySeconds=40)
    await rel.wait_phase(long, "Running", timeout=90)
    apps.scale_temporal(cluster, 0)
    queued = [f"queued-{i}" for i in range(4)]
    apps.create_executions(cluster, WORK, queued)
    await eventually(
        rel.executions,
        lambda objs: (
            all(
                aex.condition(o, "TemporalConnected").get("status") == "False"
                for o in objs
                if o["metadata"]["name"] in queued
            )
            and set(queued) <= {o["metadata"]["name"] for o in objs}
        ),
        timeout=60,
        what="the executions created while Temporal is down wait, saying so",
    )

    # 2. The upgrade, as the CHANGELOG says; Temporal returns during it.
    commands = changelog_commands(new.tag, previous["version"])
    assert commands, "CHANGELOG.md names no command for this upgrade"
    # The upgrade itself is the CHANGELOG's `helm upgrade`, run below with
    # exactly its --set values (Recreate once for the Lease, the queue names
    # 0.1.0 used) and the image of this checkout; every other step before it.
    [helm_upgrade] = [c for c in commands if c.startswith("helm upgrade")]
    keep = re.findall(r"--set \S+", helm_upgrade)
    assert "--set strategy.type=Recreate" in keep, helm_upgrade
    for command in commands:
        if command is not helm_upgrade:
            run_changelog_command(cluster, command)
    upgraded: dict[str, str] = {}

    def upgrade() -> None:
        upgraded["notes"] = rel.helm_run(
            "upgrade", apps.RELEASE, chart_ref, "--plain-http", "-n", apps.OPERATOR_NAMESPACE,
            *apps.helm_values(new), *(word for v in keep for word in v.split()),
            "--wait", "--timeout", "300s",
        )  # fmt: skip

    upgrading = threading.Thread(target=upgrade, daemon=True)
    upgrade_started = time.monotonic()
    upgrading.start()
    new_ref = f"{new.repository}:{new.tag}@{new.digest}"
    await eventually(
        lambda: [p for p in apps.operator_pods(cluster) if apps.ready(p)],
        lambda pods: (
            bool(pods) and all(p["spec"]["containers"][0]["image"] == new_ref for p in pods)
        ),
        timeout=180,
        what="the new operator pod Ready while Temporal is still down",
    )
    apps.scale_temporal(cluster, 1)
    await asyncio.to_thread(upgrading.join, 330)
    assert "notes" in upgraded, "helm upgrade did not finish"
    upgrade_s = time.monotonic() - upgrade_started
    assert "Upgrading from 0.1.0 across 0.2.0" in " ".join(upgraded["notes"].split())
    everything = finished + long + queued
    objs = await rel.all_succeed_once(everything, timeout=240)
    [new_pod] = pods_by_image(cluster)[new_ref]
    for name in long:
        workers = await rel.workers_of(objs[name])
        assert any(old_pod in w for w in workers), (name, workers)
        assert any(new_pod in w for w in workers), (name, workers)
    for name in finished:
        assert all(new_pod not in w for w in await rel.workers_of(objs[name]))
    crd = cluster.kubectl_json("get", "crd", CRDS[0])
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == apps.RELEASE
    spec_fields = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "ttlSecondsAfterFinished" in spec_fields["properties"], "the CRD was not upgraded"
    cluster.kubectl("get", "crd", CRDS[1])
    apps.create_executions(cluster, WORK, ["after-upgrade"])
    await rel.all_succeed_once(["after-upgrade"], timeout=120)
    SUMMARY.append(
        f"upgrade: {previous['version']} -> {new.tag} in {upgrade_s:.1f} s with "
        f"{len(long)} running and {len(queued)} waiting: all finished once"
    )

    # 3. Back to the previous release with executions of this one running:
    # their workflows (0.2.0's attempt loop) cannot replay on 0.1.0's code, so
    # they wait, their agents' results kept, while 0.1.0 runs new ones
    # (CHANGELOG.md, step 17).
    long2 = [f"long2-{i}" for i in range(4)]
    apps.create_executions(cluster, WORK, long2, delaySeconds=30)
    await rel.wait_phase(long2, "Running", timeout=90)
    rollback_started = time.monotonic()
    rel.helm_run(
        "rollback", apps.RELEASE, "1", "-n", apps.OPERATOR_NAMESPACE, "--wait", "--timeout", "300s"
    )
    rollback_s = time.monotonic() - rollback_started
    [back_pod] = pods_by_image(cluster)[f"{old.repository}:{old.tag}"]
    apps.create_executions(cluster, WORK, ["after-rollback"])
    await rel.all_succeed_once([*everything, "after-upgrade", "after-rollback"], timeout=120)
    paused = {o["metadata"]["name"]: o for o in rel.executions() if o["metadata"]["name"] in long2}
    for name, obj in paused.items():
        refused = await eventually(
            lambda obj=obj: rel.workflow_task_failures(obj),  # type: ignore[misc]
            lambda failures: any(back_pod in who for who, _ in failures),
            timeout=90,
            what=f"0.1.0's worker refusing to replay {name}",
        )
        assert all("attempt-loop" in why for _, why in refused), refused
    now = {o["metadata"]["name"]: aex.phase(o) for o in rel.executions()}
    assert {n: now[n] for n in long2} == dict.fromkeys(long2, "Running"), now
    for name in CRDS:
        cluster.kubectl("get", "crd", name)  # kept (crds.keep): nothing of 0.2.0 is lost
    SUMMARY.append(
        f"upgrade: rollback to {previous['version']} in {rollback_s:.1f} s with "
        f"{len(long2)} of 0.2.0 running: they wait (0.1.0 cannot replay them), "
        "new ones run on 0.1.0"
    )

    # 4. Forward to this release again, with `helm upgrade` as CHANGELOG.md
    # says (`helm rollback` to the 0.2.0 revision cannot re-adopt the CRDs
    # that the rollback to 0.1.0 left in place, crds.keep): the paused
    # executions finish, once.
    forward_started = time.monotonic()
    upgrade()
    forward_s = time.monotonic() - forward_started
    [forward_pod] = pods_by_image(cluster)[new_ref]
    objs = await rel.all_succeed_once(
        [*everything, "after-upgrade", "after-rollback", *long2], timeout=180
    )
    for name in long2:
        workers = await rel.workers_of(objs[name])
        assert any(new_pod in w for w in workers), (name, workers)
        assert any(forward_pod in w for w in workers), (name, workers)
    if cluster.audit_log is not None:
        # One reconciler at a time throughout: 0.1.0's, 0.2.0's, 0.1.0's, 0.2.0's.
        _, writers = apps.successive_writers(cluster.audit_log, WORK)
        assert writers == [old_pod, new_pod, back_pod, forward_pod], writers
    SUMMARY.append(
        f"upgrade: forward to {new.tag} again in {forward_s:.1f} s: the {len(long2)} paused "
        f"finished once; the whole path {time.monotonic() - started:.0f} s"
    )
