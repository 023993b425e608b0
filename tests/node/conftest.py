"""The node tier: a single-node cluster of real processes (localenv.node),
pulling every workload image from a registry of its own (localenv.registry).

`make e2e-kind` runs the same scenarios with AGENTEXEC_CLUSTER=kind: the
`cluster` fixture is then a kind cluster (localenv.kind) instead of the node.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from localenv import images, release
from localenv.docker import DockerEngine, EngineUnavailable
from localenv.kind import KindCluster
from localenv.node import Node
from localenv.registry import Pushed, Registry
from localenv.release import project_version
from tests.support.report import SUMMARY

KIND = os.environ.get("AGENTEXEC_CLUSTER") == "kind"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The engine the node's images are built in (and saved from)."""
    reason = None if KIND else Node.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    engine = DockerEngine()
    try:
        engine.ensure()
    except EngineUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def built_images(docker_engine: DockerEngine) -> dict[str, str]:
    """Built once per session (a tag is a hash of its inputs: built again
    later, a changed checkout would name another image than the registry
    has)."""
    return {
        "python": images.python_base_image(docker_engine),
        "operator": images.operator_image(docker_engine),
        "temporal": images.temporal_image(docker_engine),
        "pause": images.pause_image(docker_engine),
    }


@pytest.fixture(scope="session")
def node(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The node, Ready with DNS; stopped however the session ends, and the
    machine checked clean after (a leftover fails the run loudly). Its
    containerd holds only the sandbox image; workloads pull from the
    registry."""
    if KIND:
        pytest.skip("the local node: `make e2e-kind` runs the scenarios on kind instead")
    node = Node.with_images(tmp_path_factory.mktemp("node"), docker_engine)
    started = time.monotonic()
    try:
        node.start()
        steps = ", ".join(f"{step} {secs:.1f}s" for step, secs in node.timings.items())
        SUMMARY.append(f"node: started in {time.monotonic() - started:.1f}s ({steps})")
        yield node
    finally:
        stopping = time.monotonic()
        node.stop()
        SUMMARY.append(f"node: stopped in {time.monotonic() - stopping:.1f}s")
        if left := node.leftovers():
            pytest.fail("the node's teardown left:\n  " + "\n  ".join(left))


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest,
    docker_engine: DockerEngine,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node | KindCluster]:
    """Where the scenarios run: the local node, or kind for `make e2e-kind`."""
    if not KIND:
        yield request.getfixturevalue("node")
        return
    reason = KindCluster.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    kind = KindCluster(tmp_path_factory.mktemp("kind"), docker_engine)
    try:
        kind.start()
        steps = ", ".join(f"{step} {secs:.1f}s" for step, secs in kind.timings.items())
        SUMMARY.append(f"kind: cluster up ({steps})")
        yield kind
    finally:
        kind.stop()
        if left := kind.leftovers():
            pytest.fail("the kind cluster's teardown left:\n  " + "\n  ".join(left))


@pytest.fixture(scope="session")
def registry(
    cluster: Node | KindCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """The CNCF distribution registry where the cluster reaches it (loopback
    for the node, the Docker network's gateway for kind); the cluster's
    containerd pulls every workload image from it."""
    registry = Registry(tmp_path_factory.mktemp("registry"), host=cluster.registry_host)
    registry.start()
    try:
        cluster.trust_registry(registry.address)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def registry_images(
    registry: Registry,
    docker_engine: DockerEngine,
    built_images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Pushed]:
    """Every built image pushed as an OCI archive (as `make release` writes
    it): the operator's under the release version, as a release is."""
    archives = tmp_path_factory.mktemp("archives")
    pushed = {}
    for key, local in built_images.items():
        repository, _, tag = local.rpartition(":")
        name = repository.rsplit("/", 1)[-1]
        tag = project_version() if key == "operator" else tag
        archive = release.save_oci_archive(
            docker_engine, local, archives / f"{key}.oci.tar", ref_name=tag
        )
        pushed[key] = registry.push_archive(archive, name, tag)
    return pushed


@pytest.fixture(scope="session")
def chart_ref(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The chart as an OCI artifact in the registry, by digest."""
    package = release.package_chart(tmp_path_factory.mktemp("chart"))
    return registry.push_chart(package)


@pytest.fixture(scope="session")
def scenario_images(registry: Registry, registry_images: dict[str, Pushed]) -> dict[str, Pushed]:
    """The images the chart scenarios run, in the registry: the operator's,
    the same image under a second tag (for `helm upgrade`), Temporal's."""
    operator = registry_images["operator"]
    return {
        "operator": operator,
        "operator_upgrade": registry.tag(operator, f"{operator.tag}-upgrade"),
        "temporal": registry_images["temporal"],
    }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The failed-start test first: it needs the machine without a node, and
    two nodes cannot run at once (one bridge, one set of KUBE- chains)."""
    items.sort(key=lambda item: item.name != "test_failed_start_leaves_nothing")
