"""The Temporal manager over real TLS and mTLS (issue #11, section 2).

The dev server speaks plaintext, so a TLS-terminating relay sits in front of
it (tests/support/relay.py): the client's own TLS stack (the SDK's Rust core)
is what runs, ALPN h2 included.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from agentexec.settings import TemporalSettings
from agentexec.temporal.manager import TemporalManager
from localenv.pki import CertificateAuthority, KeyPair
from localenv.temporal import TemporalDevServer
from tests.integration import workflows
from tests.integration.conftest import StartManager
from tests.support.relay import TlsRelay
from tests.support.waiting import eventually


@dataclass
class Pki:
    ca: CertificateAuthority
    server: KeyPair
    client: KeyPair
    # What the manager is configured with; the test rotates these files.
    ca_file: Path
    cert_file: Path
    key_file: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority(tmp_path / "ca")
    server = ca.issue("relay", "temporal.test", server_hosts=("temporal.test", "127.0.0.1"))
    client = ca.issue("client-1", "agentexec-operator")
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for src, name in ((ca.cert_path, "ca.crt"), (client.cert, "tls.crt"), (client.key, "tls.key")):
        shutil.copy(src, mounted / name)
    return Pki(ca, server, client, mounted / "ca.crt", mounted / "tls.crt", mounted / "tls.key")


@pytest.fixture
async def mtls_relay(temporal: TemporalDevServer, pki: Pki) -> AsyncIterator[TlsRelay]:
    relay = TlsRelay(
        "127.0.0.1", temporal.port, pki.server.cert, pki.server.key, client_ca=pki.ca.cert_path
    )
    await relay.start()
    yield relay
    await relay.stop()


MakeManager = Callable[..., TemporalManager]


@pytest.fixture
def make_manager(start_manager: StartManager) -> MakeManager:
    return start_manager


def mtls_settings(relay: TlsRelay, pki: Pki, **overrides: object) -> TemporalSettings:
    # TEMPORAL_TLS is left unset: the CA file alone turns TLS on.
    return TemporalSettings(
        address=relay.address,
        tls_ca_file=pki.ca_file,
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        tls_server_name="temporal.test",
        connect_timeout=3.0,
        **overrides,  # type: ignore[arg-type]
    )


def common_name(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.rfc4514_string())


async def test_mtls_through_a_tls_terminating_relay(
    mtls_relay: TlsRelay, pki: Pki, make_manager: MakeManager, task_queue: str
) -> None:
    manager = make_manager(mtls_settings(mtls_relay, pki))
    await eventually(lambda: manager.connected, timeout=30, what="connected over mTLS")
    text = f"hello-{uuid.uuid4()}"
    result = await manager.call(
        lambda c: c.execute_workflow(
            workflows.EchoWorkflow.run, text, id=f"echo-{uuid.uuid4()}", task_queue=task_queue
        ),
        timeout=30,
    )
    assert result == text
    assert mtls_relay.client_certs  # the relay saw our client certificate
    assert "agentexec-operator" in common_name(mtls_relay.client_certs[-1])


async def test_a_wrong_ca_is_refused_with_a_clear_message(
    mtls_relay: TlsRelay, pki: Pki, tmp_path: Path, make_manager: MakeManager
) -> None:
    other = CertificateAuthority(tmp_path / "other-ca", name="someone-else")
    shutil.copy(other.cert_path, pki.ca_file)
    manager = make_manager(mtls_settings(mtls_relay, pki))

    await eventually(
        manager.status, lambda s: s["dial_attempts"] >= 2, timeout=30, what="dials refused"
    )
    assert not manager.connected
    refused = manager.unavailable()
    assert refused.reason == "TemporalUnavailable"
    assert "TLS" in refused.message
    assert "TEMPORAL_TLS_CA_FILE" in refused.message
    assert "certificate" in refused.message.lower()


async def test_a_rotated_client_certificate_never_cancels_a_running_agent(
    mtls_relay: TlsRelay, pki: Pki, make_manager: MakeManager, task_queue: str
) -> None:
    # The agent runs longer than the worker grace: a drain would cancel it.
    manager = make_manager(mtls_settings(mtls_relay, pki, worker_grace=1.0))
    await eventually(lambda: manager.connected, timeout=30, what="connected over mTLS")
    key = f"rotate-{uuid.uuid4()}"
    workflows.LOGS[key] = workflows.ActivityLog()
    handle = await manager.client().start_workflow(
        workflows.SlowWorkflow.run, args=[key, 6.0], id=key, task_queue=task_queue
    )
    await asyncio.wait_for(workflows.LOGS[key].started.wait(), 20)

    rotated = pki.ca.issue("client-2", "agentexec-operator-rotated")
    shutil.copy(rotated.cert, pki.cert_file)
    shutil.copy(rotated.key, pki.key_file)
    manager.check_settings()  # what the settings loop does every interval
    await eventually(lambda: manager.generation, lambda g: g == 2, what="re-dialled")
    await eventually(
        lambda: [common_name(der) for der in mtls_relay.client_certs],
        lambda names: "agentexec-operator-rotated" in names[-1],
        what="the relay sees the rotated certificate",
    )

    assert await asyncio.wait_for(handle.result(), 30) == key
    log = workflows.LOGS[key]
    assert not log.cancelled
    assert log.attempts == [1]  # finished once, on its first attempt
    assert manager.connected
