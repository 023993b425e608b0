"""The node tier: the image and the chart on a kind cluster made on this
machine (localenv.kind: kind's node image built here, nothing pulled), every
workload image and the chart pulled from a registry of its own
(localenv.registry).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from localenv import images, release
from localenv.docker import DockerEngine, EngineUnavailable
from localenv.kind import KindCluster
from localenv.registry import Pushed, Registry
from localenv.release import project_version
from tests.support.report import SUMMARY


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The engine kind's nodes run in and the images are built in."""
    reason = KindCluster.skip_reason()
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
        "operator": images.operator_image(docker_engine),
        "temporal": images.temporal_image(docker_engine),
    }


@pytest.fixture(scope="session")
def cluster(
    docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KindCluster]:
    """The kind cluster, Ready; deleted however the session ends, and the
    machine checked clean after (a leftover fails the run loudly)."""
    kind = KindCluster(tmp_path_factory.mktemp("kind"), docker_engine)
    try:
        kind.start()
        steps = ", ".join(f"{step} {secs:.1f}s" for step, secs in kind.timings.items())
        SUMMARY.append(f"kind: cluster up ({steps})")
        yield kind
    finally:
        stopping = time.monotonic()
        kind.stop()
        SUMMARY.append(f"kind: cluster deleted in {time.monotonic() - stopping:.1f}s")
        if left := kind.leftovers():
            pytest.fail("the kind cluster's teardown left:\n  " + "\n  ".join(left))


@pytest.fixture(scope="session")
def registry(cluster: KindCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """The CNCF distribution registry on the Docker network's gateway, where
    the node's containerd pulls every workload image from it."""
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
    the same image under a second tag (for `helm upgrade` of the operator)
    and a third (for rollouts of the runners, which run the same image),
    Temporal's."""
    operator = registry_images["operator"]
    return {
        "operator": operator,
        "operator_upgrade": registry.tag(operator, f"{operator.tag}-upgrade"),
        "runner_rollout": registry.tag(operator, f"{operator.tag}-rollout"),
        "temporal": registry_images["temporal"],
    }
