"""Two releases of the chart on one Temporal namespace never cross (issue #22):
real pods on the node, each release with the chart's defaults but the image,
watching its own namespace. Their task queues derive from the release (no
queue named), so each release's 50 executions run on its own runner pods.

The Temporal pod is the scenarios' (tests/node/apps.py); the CRDs are applied
here and removed at the end (the scenarios install them with their release,
and helm refuses to adopt CRDs it did not create).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.client import Client

from localenv.binaries import ROOT
from localenv.helm import Helm
from localenv.registry import Pushed
from tests.e2e import aex
from tests.node import apps
from tests.support.waiting import eventually

pytestmark = pytest.mark.node

RELEASES = ("red", "blue")
PER_RELEASE = 50


def operator_namespace(release: str) -> str:
    return f"aex-{release}"


def work_namespace(release: str) -> str:
    return f"work-{release}"


def install_name(release: str) -> str:
    # The chart's AGENTEXEC_INSTALL: "<release namespace>.<full name>".
    return f"{operator_namespace(release)}.{release}-agentexec-operator"


@pytest.fixture(scope="module")
def releases(
    cluster: apps.Cluster,
    scenario_images: dict[str, Pushed],
    chart_ref: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Both releases installed; yields Temporal's address as the host reaches it."""
    cluster.kubectl(
        "apply", "-f", "-", stdin=apps.temporal_manifests(scenario_images["temporal"].ref)
    )
    cluster.kubectl(
        "rollout", "status", "-n", apps.TEMPORAL_NAMESPACE, "deployment/temporal", "--timeout=180s"
    )
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    helm = Helm(cluster, tmp_path_factory.mktemp("helm"))  # type: ignore[arg-type]
    try:
        for release in RELEASES:
            ns = operator_namespace(release)
            cluster.kubectl("create", "namespace", ns)
            cluster.kubectl(
                "label", "namespace", ns,
                "pod-security.kubernetes.io/enforce=restricted",
                "pod-security.kubernetes.io/enforce-version=latest",
            )  # fmt: skip
            cluster.kubectl("create", "namespace", work_namespace(release))
            done = helm.run(
                "install", release, chart_ref, "--plain-http", "--namespace", ns,
                *apps.helm_values(scenario_images["operator"]),
                "--set", "crds.install=false",
                "--set", f"watchNamespaces={{{work_namespace(release)}}}",
                "--wait", "--timeout", "180s",
                check=False, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, f"{done.stderr}\n{apps.diagnose(cluster)}"
        yield apps.temporal_address(cluster)
    finally:
        for release in RELEASES:
            helm.run(
                "uninstall", release, "--namespace", operator_namespace(release), "--wait",
                check=False,
            )  # fmt: skip
        cluster.kubectl("delete", "-f", str(ROOT / "crds"), "--wait=true", check=False)


async def run_identities(address: str, objs: list[dict[str, Any]]) -> dict[str, str]:
    """The identity of the worker that ran each execution's agent (from history)."""
    client = await Client.connect(address)

    async def one(obj: dict[str, Any]) -> tuple[str, str]:
        history = await client.get_workflow_handle(obj["status"]["workflow"]["id"]).fetch_history()
        started = [
            e.activity_task_started_event_attributes.identity
            for e in history.events
            if e.HasField("activity_task_started_event_attributes")
        ]
        return obj["metadata"]["name"], started[0]  # run_agent, then report_status

    return dict(await asyncio.gather(*(one(o) for o in objs)))


async def test_two_releases_on_one_temporal_namespace_run_on_their_own_runner_pods(
    cluster: apps.Cluster, releases: str
) -> None:
    names = [f"n{n:02d}" for n in range(PER_RELEASE)]
    for release in RELEASES:
        apps.create_executions(cluster, work_namespace(release), names, delaySeconds=0.2)
    for release in RELEASES:
        ns = work_namespace(release)
        objs = await eventually(
            lambda ns=ns: aex.list_all(cluster, ns),  # type: ignore[arg-type, misc]
            lambda items: (
                len(items) == PER_RELEASE and all(aex.phase(o) == "Succeeded" for o in items)
            ),
            timeout=240,
            interval=2,
            what=f"{PER_RELEASE} Succeeded in {ns}",
        )
        assert {o["metadata"]["name"]: o["status"]["output"] for o in objs} == {n: n for n in names}
        queue = f"{install_name(release)}-executions"
        assert {o["status"]["workflow"]["taskQueue"] for o in objs} == {queue}
        identities = await run_identities(releases, objs)
        runner_pods = {
            p["metadata"]["name"]
            for p in cluster.kubectl_json(
                "get", "pods", "-n", operator_namespace(release),
                "-l", "app.kubernetes.io/component=runner",
            )["items"]  # type: ignore[index]
        }  # fmt: skip
        for name, identity in identities.items():
            prefix, role, pod, _pid = identity.split(":")
            assert (prefix, role) == (install_name(release), "runner"), (name, identity)
            assert pod in runner_pods, (name, identity, runner_pods)
