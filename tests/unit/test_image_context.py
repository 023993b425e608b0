"""The operator image's build context (localenv.images) holds what the
Dockerfile copies, so its content hash covers every input of the image."""

from __future__ import annotations

import io
import re
import tarfile

from localenv import images
from localenv.binaries import ROOT


def test_dockerfile_copies_only_from_the_hashed_context() -> None:
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if re.match(r"COPY\s", line) and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources, "no COPY in the Dockerfile"
    for source in sources:
        if source == "build-ca.pe[m]":  # the optional CA bundle, outside the hash
            assert images.BUILD_CA_NAME.startswith("build-ca.pe")
            continue
        top = source.strip("./").split("/")[0]
        context = images._operator_context(ROOT)
        assert any(name.split("/")[0] == top for name in context), f"{source} not in the context"


def test_context_tar_is_recognised_on_stdin() -> None:
    # The docker CLI reads a context from stdin only if its first 512 bytes
    # parse as a tar header: the Dockerfile first, no pax header.
    data = images._context({"b.txt": b"x", "Dockerfile": b"FROM scratch\n"})
    first = tarfile.TarInfo.frombuf(data[:512], "utf-8", "surrogateescape")
    assert first.name == "Dockerfile"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["Dockerfile", "b.txt"]
