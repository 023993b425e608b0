"""Credentials: which Authorization header the Kubernetes client sends (issue #11, 3).

The real rotation and revocation against an API server: tests/e2e/test_kube_credentials.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import kopf

from agentexec.kube import Credentials

INFO = kopf.ConnectionInfo(server="https://127.0.0.1:6443", token="from-login")


def write(path: Path, token: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(f"{token}\n")
    os.replace(tmp, path)


def test_the_token_file_wins_over_the_login_token(tmp_path: Path) -> None:
    write(tmp_path / "token", "one")
    creds = Credentials(INFO, tmp_path / "token", relogin=None)
    assert creds.header() == "Bearer one"


def test_a_rotated_file_is_read_once_due(tmp_path: Path) -> None:
    write(tmp_path / "token", "one")
    creds = Credentials(INFO, tmp_path / "token", relogin=None, check_every=0)
    write(tmp_path / "token", "two")
    assert creds.header() == "Bearer two"


async def test_a_401_rereads_the_file_before_it_is_due(tmp_path: Path) -> None:
    write(tmp_path / "token", "one")
    creds = Credentials(INFO, tmp_path / "token", relogin=None, check_every=3600)
    write(tmp_path / "token", "two")
    assert creds.header() == "Bearer one"  # not due yet
    assert await creds.refresh("Bearer one") is True
    assert creds.header() == "Bearer two"


async def test_a_401_with_the_same_token_is_not_retried(tmp_path: Path) -> None:
    write(tmp_path / "token", "one")
    creds = Credentials(INFO, tmp_path / "token", relogin=None)
    assert await creds.refresh("Bearer one") is False


async def test_an_unreadable_file_keeps_the_last_token(tmp_path: Path) -> None:
    write(tmp_path / "token", "one")
    creds = Credentials(INFO, tmp_path / "token", relogin=None, check_every=0)
    (tmp_path / "token").unlink()
    assert creds.header() == "Bearer one"
    assert await creds.refresh("Bearer one") is False


async def test_without_a_file_a_401_logs_in_again() -> None:
    logins = iter(["from-login", "renewed"])

    def relogin() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=INFO.server, token=next(logins))

    creds = Credentials(INFO, None, relogin=relogin)
    assert creds.header() == "Bearer from-login"
    assert await creds.refresh("Bearer from-login") is False  # the same token again
    assert await creds.refresh("Bearer from-login") is True
    assert creds.header() == "Bearer renewed"
