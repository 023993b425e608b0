"""The node tier: a single-node cluster of real processes (localenv.node)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from localenv import images
from localenv.docker import DockerEngine, EngineUnavailable
from localenv.node import Node
from tests.support.report import SUMMARY


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The engine the node's images are built in (and saved from)."""
    reason = Node.skip_reason()
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
def node_images(docker_engine: DockerEngine) -> list[str]:
    """Besides the pause image: a Python image for pods that probe the cluster."""
    return [images.python_base_image(docker_engine)]


@pytest.fixture(scope="session")
def node(
    docker_engine: DockerEngine,
    node_images: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Node]:
    """The node, Ready with DNS; stopped however the session ends, and the
    machine checked clean after (a leftover fails the run loudly)."""
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
