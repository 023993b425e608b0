"""kind's node image, built here without pulling anything.

kind creates clusters from a node image (`kind build node-image`), which
starts from kind's base image; both normally come from a registry. Here:

- `base_image`: kind's own base Dockerfile (`images/base/Dockerfile` of the
  `sigs.k8s.io/kind` module at KIND_VERSION), its `base` stage as written on
  the local Debian bookworm base (debootstrap, localenv.images) and its final
  stages with the binaries its build stages would make (containerd, runc,
  crictl, the CNI plugins) built from the same Go modules by
  hack/build-binaries.sh. `--chmod` (BuildKit only) becomes the file modes of
  the build context; nothing else of the recipe changes. Bookworm, not
  kind's trixie: systemd 257 will not boot on this machine's cgroup v1, 252
  does.
- `component_images`: the images kubeadm runs (API server, controller
  manager, scheduler, kube-proxy, etcd, CoreDNS), the pause image kind's
  containerd names, and kind's storage provisioner, under the exact names
  `kubeadm config images list` and kind's manifests give (a built binary's
  own version need not match its tag: CoreDNS and etcd are the project's
  pinned builds).
- `node_image`: `kind build node-image --type file` from a Kubernetes server
  tarball laid out as a release's (`kubernetes/server/bin`, the images in
  `kube-proxy.tar` listed first in its `repositories`, which is how kind
  learns that they are there and pulls nothing).

kindnetd, kind's CNI daemon, is a Go module the proxy does not serve
(`sigs.k8s.io/kind/images/kindnetd`: "This module version is not
available"): its image here is a placeholder that fails if run, and clusters
are created with `disableDefaultCNI` and the CNI plugins' ptp configuration
(localenv.kind). Every tag is keyed by KIND_VERSION, KUBE_VERSION and
KIND_IMAGES_REV, so a warm run builds nothing.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from localenv import images
from localenv.binaries import CACHE_DIR, ROOT, built_tool, versions
from localenv.docker import DockerEngine
from localenv.images import ContextEntry

RECIPES = ROOT / "hack" / "images"
TARBALLS = CACHE_DIR / "kind"


def _pins() -> dict[str, str]:
    return versions()


def kind_source() -> Path:
    """The kind module's files at KIND_VERSION (the Go module cache)."""
    version = _pins()["KIND_VERSION"]
    done = subprocess.run(
        [str(images.find_go()), "mod", "download", "-json", f"sigs.k8s.io/kind@{version}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(done.stdout)["Dir"])


def _built(name: str, version_key: str) -> Path:
    """A binary of hack/build-binaries.sh `kind-node`, built on first use."""
    path = CACHE_DIR / "bin" / f"{name}-{_pins()[version_key]}"
    if not path.exists():
        subprocess.run(["bash", str(ROOT / "hack" / "build-binaries.sh"), "kind-node"], check=True)
    return path


def base_binaries() -> dict[str, Path]:
    """What the base Dockerfile's build stages make, by the path kind copies
    it from."""
    containerd = {
        f"/containerd/bin/{n}": _built(n, "KIND_CONTAINERD_VERSION")
        for n in ("containerd", "ctr", "containerd-shim-runc-v2")
    }
    cni = {
        f"/cni-plugins/bin/{n}": _built(n, "KIND_CNI_PLUGINS_VERSION")
        for n in ("host-local", "loopback", "ptp", "portmap")
    }
    return {
        **containerd,
        **cni,
        "/runc/runc": _built("runc", "KIND_RUNC_VERSION"),
        "/cri-tools/build/crictl": _built("crictl", "KIND_CRICTL_VERSION"),
    }


# What the base Dockerfile copies from its build stages that is left out:
# license bundles (go-licenses runs in a stage that downloads), and the
# fuse-overlayfs snapshotter, which only rootless or zfs hosts use.
SKIPPED_FROM_STAGES = ("/_LICENSES/", "/fuse-overlayfs-snapshotter/")


@dataclass
class Recipe:
    dockerfile: str
    context: dict[str, ContextEntry]


def _instructions(text: str) -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending.strip())
    return out


def build_base_recipe(dockerfile: str, source_dir: Path, binaries: Mapping[str, Path]) -> Recipe:
    """kind's base Dockerfile for the legacy builder and local binaries.

    Keeps the `base` stage and the stages from `FROM base AS build` on;
    drops the go-build stages. `COPY --chmod=M SRC... DST` copies a context
    directory of its own whose files have mode M; `COPY --from=<go stage>`
    copies the local binary in `binaries` under that path (an unknown path
    is an error, so a new kind recipe is noticed, not half-built).
    """
    stages: list[list[str]] = [[]]
    for line in _instructions(dockerfile):
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    # Before the first FROM: the ARGs the FROM lines read.
    keep: list[str] = stages.pop(0)
    for stage in stages:
        head = stage[0].split()
        name = head[-1] if head[-2].upper() == "AS" else None
        parent = next(w for w in head[1:] if not w.startswith("--"))
        if name == "go-build" or parent == "go-build":
            continue  # the stages that build binaries: ours come from the host
        keep.extend(stage)
    context: dict[str, ContextEntry] = {}
    out: list[str] = []
    for n, line in enumerate(keep):
        words = line.split()
        if words[0].upper() != "COPY":
            out.append(line)
            continue
        flags = [w for w in words[1:] if w.startswith("--")]
        args = [w for w in words[1:] if not w.startswith("--")]
        srcs, dest = args[:-1], args[-1]
        chmod = next((f.split("=", 1)[1] for f in flags if f.startswith("--chmod=")), None)
        stage_from = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if stage_from is not None and stage_from in ("build", "base"):
            out.append(line)  # a stage of the kept recipe
            continue
        if stage_from is not None:
            for src in srcs:
                if src.startswith(SKIPPED_FROM_STAGES):
                    continue
                if src not in binaries:
                    raise ValueError(
                        f"kind's base Dockerfile copies {src} from {stage_from}: "
                        "no local build of it (localenv.kindimages.base_binaries)"
                    )
                arc = f"bin/{Path(src).name}"
                context[arc] = (binaries[src], 0o755)
                out.append(f"COPY {arc} {dest}")
            continue
        mode = int(chmod, 8) if chmod else None
        prefix = f"copy{n}"
        if "*" in dest:
            dest = dest[: dest.index("*")]
        for src in srcs:
            matches = sorted(glob.glob(str(source_dir / src)))
            if not matches:
                raise ValueError(f"kind's base Dockerfile copies {src}: nothing matches")
            for match in map(Path, matches):
                files = (
                    sorted(p for p in match.rglob("*") if p.is_file())
                    if match.is_dir()
                    else [match]
                )
                for file in files:
                    rel = file.relative_to(match) if match.is_dir() else Path(file.name)
                    if not dest.endswith("/") and len(srcs) == 1 and not match.is_dir():
                        rel = Path(Path(dest).name)
                    context[f"{prefix}/{rel}"] = (file, mode if mode is not None else 0o644)
        target = dest if dest.endswith("/") or len(srcs) > 1 else str(Path(dest).parent) + "/"
        out.append(f"COPY {prefix}/ {target}")
    context["Dockerfile"] = ("\n".join(out) + "\n").encode()
    return Recipe(dockerfile="\n".join(out) + "\n", context=context)


def _rev() -> str:
    pins = _pins()
    return f"{pins['KIND_VERSION']}-r{pins['KIND_IMAGES_REV']}"


def base_tag() -> str:
    return f"agentexec-kind-base:{_rev()}-{images.SUITE}"


def base_image(engine: DockerEngine) -> str:
    tag = base_tag()

    def build() -> None:
        source = kind_source() / "images" / "base"
        recipe = build_base_recipe((source / "Dockerfile").read_text(), source, base_binaries())
        images._build(
            engine, tag, "Dockerfile", recipe.context, {"BASE_IMAGE": images.base_image(engine)}
        )

    return images._once(engine, tag, build)


@dataclass(frozen=True)
class NodeImages:
    """The names kind's node image must hold, from kubeadm and kind."""

    kube: dict[str, str]  # component -> image (kube-apiserver, ..., etcd, coredns)
    pause: str
    kindnetd: str
    storage_provisioner: str
    storage_helper: str


def required_images(kubeadm: Path, source: Path) -> NodeImages:
    version = _pins()["KUBE_VERSION"]
    listed = subprocess.run(
        [str(kubeadm), "config", "images", "list", "--kubernetes-version", version],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    kube: dict[str, str] = {}
    for ref in listed:
        name = ref.rsplit("/", 1)[-1].split(":", 1)[0]
        if name != "pause":
            kube[name] = ref
    config = (source / "images/base/files/etc/containerd/config.toml").read_text()
    pause = re.search(r'sandbox_image\s*=\s*"([^"]+)"', config)
    consts = "\n".join(
        (source / "pkg" / "build" / "nodeimage" / f).read_text()
        for f in ("const_cni.go", "const_storage.go")
    )

    def const(name: str) -> str:
        found = re.search(rf'const {name}\s*=\s*"([^"]+)"', consts)
        if found is None:
            raise ValueError(f"kind {source.name}: no const {name}")
        return found.group(1)

    if pause is None:
        raise ValueError("kind's containerd config names no sandbox_image")
    return NodeImages(
        kube=kube,
        pause=pause.group(1),
        kindnetd=const("kindnetdImage"),
        storage_provisioner=const("storageProvisionerImage"),
        storage_helper=const("storageHelperImage"),
    )


def _tagged(engine: DockerEngine, source: str, name: str) -> str:
    engine.docker("tag", source, name)
    return name


def component_images(engine: DockerEngine, wanted: NodeImages) -> list[str]:
    """Build (once) and tag every image the node image must hold."""
    base = images.base_image(engine)
    rev = _rev()
    kube_base = f"agentexec-kube-base:{rev}-{images.SUITE}"
    recipe = RECIPES / "kube-base.Dockerfile"
    images._once(
        engine,
        kube_base,
        lambda: images._build(
            engine, kube_base, "Dockerfile", {"Dockerfile": recipe}, {"BASE_IMAGE": base}
        ),
    )
    binaries = {
        "kube-apiserver": built_tool("kube-apiserver"),
        "kube-controller-manager": built_tool("kube-controller-manager"),
        "kube-scheduler": built_tool("kube-scheduler"),
        "kube-proxy": built_tool("kube-proxy"),
        "etcd": built_tool("etcd"),
        "coredns": built_tool("coredns"),
        "local-path-provisioner": _built("local-path-provisioner", "KIND_LOCAL_PATH_VERSION"),
    }
    out: list[str] = []

    def binary_image(name: str, dockerfile: Path, target: str) -> str:
        local = f"agentexec-kind-{name}:{rev}-{images._digest([dockerfile])[:8]}"

        def build() -> None:
            images._build(
                engine,
                local,
                "Dockerfile",
                {"Dockerfile": dockerfile, name: (binaries[name], 0o755)},
                {"BASE_IMAGE": kube_base, "BIN": name},
            )

        images._once(engine, local, build)
        return _tagged(engine, local, target)

    component = RECIPES / "kube-component.Dockerfile"
    for name, target in wanted.kube.items():
        if name == "coredns":
            out.append(binary_image("coredns", RECIPES / "coredns.Dockerfile", target))
        else:
            out.append(binary_image(name, component, target))
    out.append(binary_image("local-path-provisioner", component, wanted.storage_provisioner))
    # The helper runs `sh -c 'mkdir ... / rm ...'`: the Debian base has them.
    out.append(_tagged(engine, kube_base, wanted.storage_helper))
    out.append(_tagged(engine, images.pause_image(engine), wanted.pause))
    placeholder = f"agentexec-kindnetd-placeholder:{rev}"
    images._once(
        engine,
        placeholder,
        lambda: images._build(
            engine,
            placeholder,
            "Dockerfile",
            {"Dockerfile": RECIPES / "kindnetd-placeholder.Dockerfile"},
            {"BASE_IMAGE": base},
        ),
    )
    out.append(_tagged(engine, placeholder, wanted.kindnetd))
    return out


def node_tag() -> str:
    return f"agentexec-kind-node:{_pins()['KUBE_VERSION']}-{_rev()}"


def node_image(engine: DockerEngine) -> str:
    """kind's node image for KUBE_VERSION, built with `kind build node-image`."""
    tag = node_tag()

    def build() -> None:
        source = kind_source()
        kubeadm = built_tool("kubeadm")
        wanted = required_images(kubeadm, source)
        base = base_image(engine)
        tagged = component_images(engine, wanted)
        tarball = server_tarball(engine, wanted, tagged)
        started = time.monotonic()
        done = subprocess.run(
            [
                str(built_tool("kind")), "build", "node-image", "--type", "file",
                "--base-image", base, "--image", tag, "-v", "1", str(tarball),
            ],
            env=engine.env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        log = done.stdout + done.stderr
        if done.returncode != 0 or "Failed to pull" in log:
            raise RuntimeError(f"kind build node-image failed:\n{log[-4000:]}")
        tarball.unlink()
        print(f"kind: node image {tag} in {time.monotonic() - started:.1f} s", flush=True)

    return images._once(engine, tag, build)


def server_tarball(engine: DockerEngine, wanted: NodeImages, tagged: list[str]) -> Path:
    """kubernetes-server-linux-amd64.tar.gz as a release lays it out, with
    every other image in kube-proxy.tar (its `repositories` first)."""
    TARBALLS.mkdir(parents=True, exist_ok=True)
    dest = TARBALLS / f"kubernetes-server-{_pins()['KUBE_VERSION']}-{_rev()}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="kind-server-", dir=TARBALLS) as tmp:
        work = Path(tmp)
        bindir = work / "kubernetes" / "server" / "bin"
        bindir.mkdir(parents=True)
        (work / "kubernetes" / "version").write_text(_pins()["KUBE_VERSION"] + "\n")
        for name in ("kubeadm", "kubelet", "kubectl"):
            shutil.copy(built_tool(name), bindir / name)
            os.chmod(bindir / name, 0o755)
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            engine.docker("save", "-o", str(bindir / f"{name}.tar"), wanted.kube[name])
        rest = [ref for ref in tagged if ref not in {wanted.kube[n] for n in (
            "kube-apiserver", "kube-controller-manager", "kube-scheduler")}]  # fmt: skip
        _save_with_repositories(engine, rest, bindir / "kube-proxy.tar", work / "x")
        partial = dest.with_name(dest.name + ".partial")
        # kind reads only gzip, and unpacks it at once: stored, not
        # compressed (level 9 took minutes for the ~1 GB of images).
        with tarfile.open(partial, "w:gz", compresslevel=0) as tar:
            tar.add(work / "kubernetes", arcname="kubernetes")
        partial.rename(dest)
    return dest


def _save_with_repositories(
    engine: DockerEngine, refs: list[str], dest: Path, scratch: Path
) -> None:
    """`docker save` of refs, with `repositories` naming each (kind reads the
    names of an archive's images from that file, first in the archive)."""
    scratch.mkdir()
    saved = scratch / "saved.tar"
    engine.docker("save", "-o", str(saved), *refs)
    repositories: dict[str, dict[str, str]] = {}
    for ref in refs:
        repo, tag = ref.rsplit(":", 1)
        repositories.setdefault(repo, {})[tag] = "0"
    with tarfile.open(saved) as src, tarfile.open(dest, "w") as out:
        data = json.dumps(repositories).encode()
        info = tarfile.TarInfo("repositories")
        info.size = len(data)
        out.addfile(info, fileobj=io.BytesIO(data))
        for member in src.getmembers():
            if member.name == "repositories":
                continue
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
    saved.unlink()
