"""What the chart does with versions: the image pinned by digest, and upgrade
notes printed only when an upgrade crosses the version that has them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from agentexec import __version__
from localenv.helm import CHART, Helm
from localenv.kube import ControlPlane

pytestmark = pytest.mark.e2e

NO_CRDS = ("--set", "crds.install=false")
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def helm(control_plane: ControlPlane, tmp_path: Path) -> Helm:
    return Helm(control_plane, tmp_path / "helm")


def chart_at(version: str, tmp_path: Path) -> Path:
    """This chart, claiming another version (as an older or newer release)."""
    copy = tmp_path / f"chart-{version}"
    shutil.copytree(CHART, copy)
    meta = yaml.safe_load((copy / "Chart.yaml").read_text())
    meta["version"] = meta["appVersion"] = version
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return copy


def images_of(rendered: str) -> set[str]:
    return {
        c["image"]
        for doc in yaml.safe_load_all(rendered)
        if doc and doc["kind"] == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
    }


def test_image_digest_pins_the_operator_and_runner_image(helm: Helm) -> None:
    repo = "ghcr.io/agentexec/agentexec-operator"
    assert images_of(helm.template()) == {f"{repo}:{__version__}"}
    pinned = helm.template("--set", f"image.digest={DIGEST}")
    assert images_of(pinned) == {f"{repo}:{__version__}@{DIGEST}"}
    bad = helm.template_result("--set", "image.digest=latest")
    assert bad.returncode != 0
    assert "at '/image/digest': 'latest' does not match pattern" in bad.stderr


def test_upgrade_notes_print_only_when_the_upgrade_crosses_their_version(
    helm: Helm, namespace: str, tmp_path: Path
) -> None:
    def run(command: str, chart: Path) -> str:
        # Namespaced: no cluster-wide role of this release meets another test's.
        done = helm.run(
            command, "notes", str(chart), "-n", namespace, *NO_CRDS,
            "--set", f"watchNamespaces={{{namespace}}}",
            "--set", "rbac.aggregateToDefaultRoles=false",
        )  # fmt: skip
        return " ".join(done.stdout.split())

    try:
        assert "Upgrading" not in run("install", chart_at("0.1.0", tmp_path))
        said = run("upgrade", CHART)
        assert "Upgrading from 0.1.0 across 0.2.0:" in said, said
        assert "runner Deployment" in said
        assert 'Read "Upgrading from" under 0.2.0 in CHANGELOG.md' in said
        # The same version again, a newer one, and back down: nothing to read.
        assert "Upgrading" not in run("upgrade", CHART)
        assert "Upgrading" not in run("upgrade", chart_at("9.0.0", tmp_path))
        assert "Upgrading" not in run("upgrade", CHART)
    finally:
        helm.run("uninstall", "notes", "-n", namespace, check=False)
