"""The e2e tier: a real control plane (etcd + kube-apiserver) for the session."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.support.kube import ControlPlane


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("kube"))
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> str:
    """A namespace of the test's own, so tests never see each other's objects."""
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    name = f"t-{name}-{abs(hash(request.node.nodeid)) % 10_000}"
    control_plane.kubectl("create", "namespace", name)
    return name
