"""`make release`: the artifacts of one version in `dist/`, and the pieces of
it the node tier reuses to install from a registry.

The version has one source, `agentexec.__version__` (read here without
importing the package); the chart's `version` and `appVersion`, the image
tag, `--version` and CHANGELOG.md must agree with it, and `check_versions()`
says where they do not.

`dist/` after `python -m localenv.release`:

- `agentexec-operator-V.tgz`: the chart (`helm package`);
- `agentexec-operator-V.oci.tar`: the image as an OCI image layout archive
  (`skopeo copy` from the engine's image); copying it to a registry with an
  OCI-aware tool (skopeo, crane, oras, regctl) keeps its manifest, so the
  digest stays what
- `agentexec-operator-V.digest` says (`sha256:...`, for `image.digest`);
- `agentexec-operator-V.sbom.cdx.json`: a CycloneDX SBOM of the image's
  Python environment, made by cyclonedx-py (PyPI `cyclonedx-bom`) run inside
  the image against its own interpreter;
- `SHA256SUMS`: `sha256sum -c` checks every file above.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from localenv.binaries import CACHE_DIR, ROOT, built_tool, versions
from localenv.docker import DockerEngine, EngineUnavailable

PACKAGE_INIT = ROOT / "operator" / "agentexec" / "__init__.py"
CHART_DIR = ROOT / "charts" / "agentexec-operator"
CHANGELOG = ROOT / "CHANGELOG.md"
UPGRADE_NOTES = CHART_DIR / "files" / "upgrade-notes.yaml"
DIST = ROOT / "dist"
IMAGE_NAME = "agentexec-operator"
# Where the image's venv is (the Dockerfile's /opt/agentexec).
IMAGE_PYTHON = "/opt/agentexec/bin/python"


def project_version(init: Path = PACKAGE_INIT) -> str:
    """`__version__` of the package, read from its source."""
    for node in ast.parse(init.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise ValueError(f"{init}: no __version__ = '...'")


def changelog_sections(text: str) -> dict[str, str]:
    """Version -> the text under its `## [version]` heading."""
    parts = re.split(r"(?m)^## \[([^\]]+)\][^\n]*\n", text)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def check_versions(root: Path = ROOT) -> list[str]:
    """What disagrees with the package's version (empty: all agree)."""
    version = project_version(root / "operator" / "agentexec" / "__init__.py")
    problems = []
    chart = yaml.safe_load((root / "charts" / "agentexec-operator" / "Chart.yaml").read_text())
    for key in ("version", "appVersion"):
        if str(chart.get(key)) != version:
            problems.append(f"Chart.yaml {key} is {chart.get(key)!r}, the package {version!r}")
    sections = changelog_sections((root / "CHANGELOG.md").read_text())
    if version not in sections:
        problems.append(f"CHANGELOG.md has no '## [{version}]' section")
    notes = yaml.safe_load(
        (root / "charts" / "agentexec-operator" / "files" / "upgrade-notes.yaml").read_text()
    )
    for noted in notes or {}:
        if "### Upgrading from" not in sections.get(str(noted), ""):
            problems.append(
                f"files/upgrade-notes.yaml has {noted!r} but CHANGELOG.md has no "
                f"'### Upgrading from' under [{noted}]"
            )
    return problems


def save_oci_archive(engine: DockerEngine, tag: str, dest: Path, ref_name: str) -> Path:
    """The engine's image `tag` as an OCI image layout archive at `dest`,
    its manifest named `ref_name` (skopeo: docker-archive -> oci-archive)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="release-") as tmp:
        saved = Path(tmp) / "image.tar"
        engine.docker("save", "-o", str(saved), tag)
        partial = dest.with_name(dest.name + ".partial")
        partial.unlink(missing_ok=True)
        _skopeo("copy", "--quiet", f"docker-archive:{saved}", f"oci-archive:{partial}:{ref_name}")
        partial.rename(dest)
    return dest


def archive_digest(archive: Path) -> str:
    """The manifest digest of the one image in an OCI archive (what a
    registry reports once it is pushed unchanged)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ValueError(f"{archive}: no index.json")
        index = json.load(member)
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise ValueError(f"{archive}: {len(manifests)} manifests in index.json, expected 1")
    return str(manifests[0]["digest"])


def push_oci_archive(archive: Path, ref: str, plain_http: bool = True) -> None:
    """Copy the archive's image to `ref` (registry/repo:tag) unchanged."""
    flags = ["--dest-tls-verify=false"] if plain_http else []
    _skopeo("copy", "--quiet", *flags, f"oci-archive:{archive}", f"docker://{ref}")


def package_chart(dest_dir: Path, helm: Path | None = None, chart_dir: Path = CHART_DIR) -> Path:
    """`helm package` of the chart into dest_dir; the chart's own version."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    binary = helm or built_tool("helm")
    done = subprocess.run(
        [str(binary), "package", str(chart_dir), "--destination", str(dest_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"helm package failed: {done.stderr.strip()}")
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    return dest_dir / f"{chart['name']}-{chart['version']}.tgz"


def write_sbom(engine: DockerEngine, tag: str, dest: Path) -> Path:
    """A CycloneDX SBOM (JSON) of the image's Python environment.

    cyclonedx-py runs inside the image (no network, read-only root) from the
    dev venv mounted read-only, and asks the image's own interpreter for its
    sys.path: the SBOM lists what that interpreter imports, not the host's.
    `--output-reproducible`: no serial number or timestamp, so the same
    image gives the same file.
    """
    site = sysconfig.get_paths()["purelib"]
    program = (
        "import runpy, sys\n"
        "sys.path.insert(0, '/sbom-tool')\n"
        "sys.argv = ['cyclonedx-py', 'environment', '--output-format', 'JSON',\n"
        "            '--output-reproducible', '--output-file', '-', sys.argv[1]]\n"
        "runpy.run_module('cyclonedx_py', run_name='__main__')\n"
    )
    done = engine.docker(
        "run", "--rm", "--network", "none", "--read-only",
        "-v", f"{site}:/sbom-tool:ro", "--entrypoint", IMAGE_PYTHON,
        tag, "-c", program, IMAGE_PYTHON,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"cyclonedx-py in {tag} failed: {done.stderr.strip()[-2000:]}")
    bom = json.loads(done.stdout)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(bom, indent=2, sort_keys=False) + "\n")
    return dest


def sbom_components(path: Path) -> dict[str, str]:
    """Name -> version of the libraries an SBOM lists."""
    bom = json.loads(path.read_text())
    return {c["name"]: c.get("version", "") for c in bom.get("components", [])}


def write_checksums(dist: Path, files: Sequence[Path]) -> Path:
    lines = []
    for path in sorted(files, key=lambda p: p.name):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.name}\n")
    sums = dist / "SHA256SUMS"
    sums.write_text("".join(lines))
    return sums


def previous_release() -> tuple[str, str]:
    """(version, commit) of the release before this one (hack/versions.env)."""
    pins = versions()
    return pins["PREVIOUS_RELEASE"], pins["PREVIOUS_RELEASE_COMMIT"]


def release_tree(commit: str) -> Path:
    """The files of `commit` (git archive), cached under .cache/releases."""
    tree = CACHE_DIR / "releases" / commit / "src"
    if tree.exists():
        return tree
    tree.parent.mkdir(parents=True, exist_ok=True)
    partial = tree.with_name("src.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise RuntimeError(
            f"git archive {commit} failed (a shallow clone?): {archive.stderr.decode().strip()}"
        )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(partial, filter="data")
    partial.rename(tree)
    return tree


def previous_image(engine: DockerEngine) -> str:
    """The previous release's image: its commit's source, built with this
    checkout's Dockerfile and constraints (the same layout: /opt/agentexec,
    user 10001), on the local base."""
    from localenv import images  # needs Docker: imported when used

    version, commit = previous_release()
    return images.operator_image(engine, source=release_tree(commit), name=f"v{version}")


def previous_chart(dest_dir: Path, helm: Path | None = None) -> Path:
    """`helm package` of the previous release's chart, as it was."""
    chart_dir = release_tree(previous_release()[1]) / "charts" / CHART_DIR.name
    return package_chart(dest_dir, helm, chart_dir=chart_dir)


def _skopeo(*args: str) -> None:
    if shutil.which("skopeo") is None:
        subprocess.run(["bash", str(ROOT / "hack" / "host-packages.sh")], check=False)
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args[:2])} failed: {done.stderr.strip()}")


def release(engine: DockerEngine, dist: Path = DIST) -> dict[str, Path]:
    """Build everything of this version into `dist` (emptied first)."""
    from localenv import images  # needs Docker: imported when used

    problems = check_versions()
    if problems:
        raise RuntimeError("versions disagree:\n  " + "\n  ".join(problems))
    version = project_version()
    shutil.rmtree(dist, ignore_errors=True)
    dist.mkdir(parents=True)
    tag = f"{IMAGE_NAME}:{version}"
    images.operator_image(engine, tag)
    out = {
        "chart": package_chart(dist),
        "image": save_oci_archive(
            engine, tag, dist / f"{IMAGE_NAME}-{version}.oci.tar", ref_name=version
        ),
        "sbom": write_sbom(engine, tag, dist / f"{IMAGE_NAME}-{version}.sbom.cdx.json"),
    }
    digest = dist / f"{IMAGE_NAME}-{version}.digest"
    digest.write_text(archive_digest(out["image"]) + "\n")
    out["digest"] = digest
    out["checksums"] = write_checksums(dist, list(out.values()))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localenv.release", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--dist", type=Path, default=DIST, help="output directory (emptied)")
    parser.add_argument("--check", action="store_true", help="only check that versions agree")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_versions()
        for problem in problems:
            print(f"release: {problem}", file=sys.stderr)
        return 1 if problems else 0
    engine = DockerEngine()
    try:
        engine.ensure()
    except EngineUnavailable as exc:
        print(f"release: no Docker engine to build the image: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        out = release(engine, args.dist)
    finally:
        if engine.started:
            engine.stop()
    for name, path in out.items():
        print(f"{name:9} {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"image digest {out['digest'].read_text().strip()}")
    print(f"release {project_version()} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
