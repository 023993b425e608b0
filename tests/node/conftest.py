"""The node tier: a single-node cluster of real processes (localenv.node).

`make e2e-kind` runs the same tests with AGENTEXEC_CLUSTER=kind: the
`cluster` fixture is then a kind cluster (localenv.kind) instead of the node.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from localenv import images
from localenv.docker import DockerEngine, EngineUnavailable
from localenv.kind import KindCluster
from localenv.node import Node
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
    later, a changed checkout would name another image than the node has)."""
    return {
        "python": images.python_base_image(docker_engine),
        "operator": images.operator_image(docker_engine),
        "temporal": images.temporal_image(docker_engine),
    }


@pytest.fixture(scope="session")
def node_images(built_images: dict[str, str]) -> list[str]:
    """Besides the pause image: a Python image for pods that probe the
    cluster, the operator's image and Temporal's."""
    return list(built_images.values())


@pytest.fixture(scope="session")
def node(
    docker_engine: DockerEngine,
    node_images: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    """The node, Ready with DNS; stopped however the session ends, and the
    machine checked clean after (a leftover fails the run loudly)."""
    if KIND:
        pytest.skip("the local node: `make e2e-kind` runs the scenarios on kind instead")
    node = Node.with_images(tmp_path_factory.mktemp("node"), docker_engine, node_images)
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
    kind = KindCluster(tmp_path_factory.mktemp("kind"), docker_env=docker_engine.env)
    reason = kind.skip_reason()  # before building anything
    if reason is not None:
        pytest.skip(reason)
    tags: list[str] = request.getfixturevalue("node_images")
    try:
        kind.start()
        for tag in tags:
            kind.load_image(images.save(docker_engine, tag, tmp_path_factory.mktemp("images")))
        yield kind
    finally:
        kind.stop()


@pytest.fixture(scope="session")
def scenario_images(
    cluster: Node | KindCluster,
    docker_engine: DockerEngine,
    built_images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The images the chart scenarios run, already on the cluster: the
    operator's, the same under a second tag (for `helm upgrade`), Temporal's."""
    operator = built_images["operator"]
    upgrade = f"{operator}-upgrade"
    docker_engine.docker("tag", operator, upgrade)
    cluster.load_image(images.save(docker_engine, upgrade, tmp_path_factory.mktemp("upgrade")))
    return {"operator": operator, "operator_upgrade": upgrade, "temporal": built_images["temporal"]}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The failed-start test first: it needs the machine without a node, and
    two nodes cannot run at once (one bridge, one set of KUBE- chains)."""
    items.sort(key=lambda item: item.name != "test_failed_start_leaves_nothing")
