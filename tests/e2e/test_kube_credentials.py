"""The operator's Kubernetes client follows a rotated token (issue #11, section 3).

Real kube-apiserver + etcd. Each token is a TokenRequest bound to a Secret:
deleting the Secret revokes the token, enforced by the API server's own
service-account authenticator (no kube-controller-manager runs here). The
token lives in a file, as a projected service-account token does in a pod.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import kopf
import pytest

from agentexec.kube import Credentials, Kube, KubeError
from localenv.kube import ControlPlane
from tests.e2e import aex
from tests.support.waiting import eventually

SA = "rotating-operator"


def grant(plane: ControlPlane, namespace: str) -> None:
    """The ServiceAccount may read executions and write their status, nothing more."""
    plane.kubectl("create", "serviceaccount", SA, "-n", namespace)
    plane.kubectl(
        "create", "role", "status-writer", "-n", namespace,
        "--verb=get", "--resource=agentexecutions.agentexec.io",
    )  # fmt: skip
    plane.kubectl(
        "create", "role", "status-patcher", "-n", namespace,
        "--verb=patch", "--resource=agentexecutions.agentexec.io/status",
    )  # fmt: skip
    for role in ("status-writer", "status-patcher"):
        plane.kubectl(
            "create", "rolebinding", role, "-n", namespace,
            f"--role={role}", f"--serviceaccount={namespace}:{SA}",
        )  # fmt: skip


def bound_token(plane: ControlPlane, namespace: str, secret: str) -> str:
    """A token for SA that lives only as long as the Secret `secret`."""
    plane.kubectl("create", "secret", "generic", secret, "-n", namespace)
    return plane.kubectl(
        "create", "token", SA, "-n", namespace, "--duration=1h",
        "--bound-object-kind=Secret", f"--bound-object-name={secret}",
    ).stdout.strip()  # fmt: skip


def rotate(token_file: Path, token: str) -> None:
    """Replace the file atomically, as kubelet swaps a projected volume's ..data link."""
    tmp = token_file.with_suffix(".new")
    tmp.write_text(token)
    os.replace(tmp, token_file)


async def status_output(kube: Kube, namespace: str, name: str, output: str) -> str:
    """A status write as reconciliation makes it: read, then write at that version."""
    current = await kube.get(namespace, name)
    assert current is not None
    version = current["metadata"]["resourceVersion"]
    written = await kube.write_status(namespace, name, version, {"output": output})
    return str(written["status"]["output"])


async def answers(plane: ControlPlane, token: str) -> int:
    """The HTTP status the API server gives a bare request with `token`."""
    probe = Kube(kopf.ConnectionInfo(server=plane.url, ca_path=str(plane.ca_path), token=token))
    try:
        await probe.request("GET", "/apis/agentexec.io/v1alpha1")
    except KubeError as exc:
        return exc.status
    finally:
        await probe.close()
    return 200


@pytest.mark.parametrize(
    "check_every",
    [0.0, 3600.0],
    ids=["file-change-noticed", "reread-on-401"],
)
async def test_status_writes_survive_token_rotation_and_revocation(
    control_plane: ControlPlane,
    namespace: str,
    crd: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    check_every: float,
) -> None:
    grant(control_plane, namespace)
    aex.create(control_plane, namespace, "rotating", "hi")
    old, new = (bound_token(control_plane, namespace, s) for s in ("binding-1", "binding-2"))
    token_file = tmp_path / "token"
    rotate(token_file, old)
    # No token in the connection info: the file is the only credential.
    info = kopf.ConnectionInfo(server=control_plane.url, ca_path=str(control_plane.ca_path))
    kube = Kube(info, Credentials(info, token_file, relogin=None, check_every=check_every))
    try:
        assert await status_output(kube, namespace, "rotating", "first") == "first"

        rotate(token_file, new)
        control_plane.kubectl("delete", "secret", "binding-1", "-n", namespace)
        # Revocation is real: the old token is refused once the API server's
        # token cache (10 s for a success) forgets it; the new one is not.
        await eventually(
            lambda: answers(control_plane, old), lambda s: s == 401, what="the old token refused"
        )
        assert await answers(control_plane, new) == 200

        with caplog.at_level(logging.INFO, logger="agentexec.kube"):
            assert await status_output(kube, namespace, "rotating", "second") == "second"
        rejected = [r for r in caplog.records if "rejected (401)" in r.getMessage()]
        if check_every == 0:
            assert rejected == [], "the changed file should have been read before any 401"
        else:
            # The file was not due for a check: the 401 made the client re-read it.
            assert len(rejected) == 1
            assert rejected[0].__dict__["retrying_with_new_credentials"] is True
        stored = aex.get(control_plane, namespace, "rotating")
        assert stored["status"]["output"] == "second", json.dumps(stored.get("status"))
    finally:
        await kube.close()


async def test_a_revoked_token_with_nothing_new_fails_with_401(
    control_plane: ControlPlane, namespace: str, crd: None, tmp_path: Path
) -> None:
    """No silent success and no retry loop: one 401 back to the caller."""
    grant(control_plane, namespace)
    aex.create(control_plane, namespace, "revoked", "hi")
    token_file = tmp_path / "token"
    token = bound_token(control_plane, namespace, "only-binding")
    rotate(token_file, token)
    info = kopf.ConnectionInfo(server=control_plane.url, ca_path=str(control_plane.ca_path))
    kube = Kube(info, Credentials(info, token_file, relogin=None))
    try:
        assert await status_output(kube, namespace, "revoked", "ok") == "ok"
        control_plane.kubectl("delete", "secret", "only-binding", "-n", namespace)
        await eventually(
            lambda: answers(control_plane, token), lambda s: s == 401, what="the token refused"
        )
        with pytest.raises(KubeError) as err:
            await status_output(kube, namespace, "revoked", "never")
        assert err.value.status == 401
    finally:
        await kube.close()
