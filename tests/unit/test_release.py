"""One version for everything a release ships, and a changelog that has it."""

from __future__ import annotations

import shutil
import subprocess
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest
import yaml

from agentexec import __version__
from localenv.binaries import ROOT, venv_tool
from localenv.release import changelog_sections, check_versions, project_version


def test_the_package_is_the_one_source_and_everything_agrees() -> None:
    assert project_version() == __version__
    # The installed metadata comes from the same attribute (pyproject's
    # dynamic version), and so does `--version`.
    assert dist_version("agentexec-operator") == __version__
    shown = subprocess.run(
        [str(venv_tool("agentexec-operator")), "--version"], capture_output=True, text=True
    )
    assert shown.stdout.strip() == f"agentexec-operator {__version__}", shown.stderr
    chart = yaml.safe_load((ROOT / "charts/agentexec-operator/Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__)
    assert check_versions() == []


def copy_of_the_tree(tmp_path: Path) -> Path:
    for rel in (
        "operator/agentexec/__init__.py",
        "charts/agentexec-operator/Chart.yaml",
        "charts/agentexec-operator/files/upgrade-notes.yaml",
        "CHANGELOG.md",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def test_a_version_bumped_in_one_place_is_named(tmp_path: Path) -> None:
    root = copy_of_the_tree(tmp_path)
    init = root / "operator/agentexec/__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', '"9.9.9"'))
    problems = check_versions(root)
    assert f"Chart.yaml version is '{__version__}', the package '9.9.9'" in problems
    assert f"Chart.yaml appVersion is '{__version__}', the package '9.9.9'" in problems
    assert "CHANGELOG.md has no '## [9.9.9]' section" in problems


def test_upgrade_notes_the_chart_prints_need_a_changelog_section(tmp_path: Path) -> None:
    root = copy_of_the_tree(tmp_path)
    notes = root / "charts/agentexec-operator/files/upgrade-notes.yaml"
    notes.write_text(notes.read_text() + '"0.1.0": |-\n  nothing\n')
    assert check_versions(root) == [
        "files/upgrade-notes.yaml has '0.1.0' but CHANGELOG.md has no "
        "'### Upgrading from' under [0.1.0]"
    ]


def test_the_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    sections = changelog_sections(text)
    assert list(sections)[:2] == [__version__, "0.1.0"]
    for version in sections:
        assert f"\n[{version}]: " in text, f"no link reference for [{version}]"
    # The upgrade notes moved here from docs/operations.md; the chart prints
    # a summary of each (NOTES.txt), only when an upgrade crosses it.
    assert "### Upgrading from 0.1.0" in sections[__version__]
    assert "Upgrading to this version" not in (ROOT / "docs/operations.md").read_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# C\n## [1.0.0] - x\nA\n## [0.9.0]\nB\n", {"1.0.0": "A\n", "0.9.0": "B\n"}),
        ("# C\n## [Unreleased]\n\n## [1.0.0] - x\nA\n", {"Unreleased": "\n", "1.0.0": "A\n"}),
        ("# C\nno sections\n", {}),
    ],
)
def test_changelog_sections(text: str, expected: dict[str, str]) -> None:
    assert changelog_sections(text) == expected
