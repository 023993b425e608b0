"""The Temporal manager against a real dev server: down at start, killed,
blackholed, workers dying, re-dials draining, concurrent triggers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.runtime import Runtime, TelemetryConfig

from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.manager import TemporalManager, TemporalUnavailable
from localenv.binaries import venv_tool
from localenv.procs import ManagedProcess, free_port
from localenv.temporal import TemporalDevServer
from tests.integration import workflows
from tests.integration.conftest import StartManager
from tests.support.relay import TcpRelay
from tests.support.waiting import eventually

MakeManager = Callable[..., TemporalManager]


@pytest.fixture
def make_manager(temporal: TemporalDevServer, start_manager: StartManager) -> MakeManager:
    def make(address: str | None = None, **overrides: object) -> TemporalManager:
        settings = dataclasses.replace(
            TemporalSettings(
                address=address or temporal.address,
                backoff_base=0.2,
                backoff_max=2.0,
                connect_timeout=3.0,
                worker_grace=10.0,
            ),
            **overrides,  # type: ignore[arg-type]
        )
        return start_manager(settings)

    return make


def metric(manager: TemporalManager, name: str) -> float:
    labels = {"host_port": manager.settings.address, "namespace": manager.settings.namespace}
    value = manager.metrics.registry.get_sample_value(name, labels)
    return -1.0 if value is None else value


async def round_trip(manager: TemporalManager, task_queue: str) -> str:
    """A workflow through the manager's current client and supervised worker."""
    text = f"hello-{uuid.uuid4()}"
    result = await manager.call(
        lambda client: client.execute_workflow(
            workflows.EchoWorkflow.run, text, id=f"echo-{uuid.uuid4()}", task_queue=task_queue
        ),
        timeout=30,
    )
    assert result == text
    return result


async def connected(manager: TemporalManager, timeout: float = 30) -> None:
    await eventually(
        manager.status, lambda s: s["connected"], timeout=timeout, what="manager connected"
    )


async def disconnected(manager: TemporalManager, timeout: float = 30) -> None:
    await eventually(
        manager.status, lambda s: not s["connected"], timeout=timeout, what="manager disconnected"
    )


async def test_temporal_down_at_start(
    temporal: TemporalDevServer, make_manager: MakeManager, task_queue: str
) -> None:
    temporal.kill()
    manager = make_manager()
    await eventually(manager.status, lambda s: s["dial_attempts"] >= 2, what="retrying dials")

    started = time.monotonic()
    with pytest.raises(TemporalUnavailable) as refused:
        manager.client()
    assert time.monotonic() - started < 0.1  # at once, no hang
    assert refused.value.reason == "TemporalUnavailable"
    assert metric(manager, "temporal_connection_status") == 0
    assert metric(manager, "temporal_workers_running") == 0

    await asyncio.sleep(10)  # the scenario: Temporal appears 10 s later
    temporal.start()
    await connected(manager)
    assert manager.workers_running == 1
    assert metric(manager, "temporal_connection_status") == 1
    assert metric(manager, "temporal_workers_running") == 1
    assert metric(manager, "temporal_reconnection_attempts_total") >= 1
    await round_trip(manager, manager.worker_specs[0].task_queue)


@pytest.mark.parametrize("down_for", [5, 30, 90])
async def test_sigkill_and_restart(
    temporal: TemporalDevServer, make_manager: MakeManager, task_queue: str, down_for: int
) -> None:
    manager = make_manager()
    await connected(manager)
    await round_trip(manager, task_queue)
    attempts_before = metric(manager, "temporal_reconnection_attempts_total")

    temporal.kill()
    await disconnected(manager, timeout=5)
    assert metric(manager, "temporal_connection_status") == 0
    with pytest.raises(TemporalUnavailable):
        manager.client()
    await asyncio.sleep(down_for)
    temporal.start()

    await connected(manager)
    assert metric(manager, "temporal_connection_status") == 1
    assert metric(manager, "temporal_reconnection_attempts_total") > attempts_before
    assert metric(manager, "temporal_health_probe_failures_total") >= 1
    assert manager.status()["downtime_seconds"] >= down_for
    await round_trip(manager, task_queue)


async def test_blackhole_is_detected_and_recovered(
    temporal: TemporalDevServer, make_manager: MakeManager, task_queue: str
) -> None:
    relay = TcpRelay("127.0.0.1", temporal.port)
    await relay.start()
    try:
        manager = make_manager(relay.address, probe_interval=1.0, probe_timeout=1.0)
        await connected(manager)
        await round_trip(manager, task_queue)

        relay.blackhole()
        cut = time.monotonic()
        await disconnected(manager, timeout=10)
        detected = time.monotonic() - cut
        # Within probe interval + two probe timeouts (one failed probe is not
        # enough: TEMPORAL_DOWN_AFTER_SECONDS) + the fast re-probe, plus slack.
        assert detected <= 1.0 + 2 * 1.0 + 0.1 + 0.75, detected
        assert manager.status()["last_error"]

        relay.restore()
        await connected(manager, timeout=30)
        await round_trip(manager, task_queue)
    finally:
        await relay.stop()


async def test_a_worker_that_dies_is_restarted(make_manager: MakeManager, task_queue: str) -> None:
    manager = make_manager()
    await connected(manager)
    await eventually(lambda: manager.workers_running, what="worker running")
    victim = manager.workers[0].worker
    assert victim is not None
    await victim.shutdown()  # run() returns without the manager asking: a dead worker

    await eventually(lambda: manager.worker_restarts, what="worker restarted", timeout=20)
    await eventually(lambda: manager.workers_running == 1, what="worker running again")
    assert manager.workers[0].worker is not victim
    await round_trip(manager, task_queue)


async def test_a_redial_keeps_in_flight_activities_running(
    make_manager: MakeManager, task_queue: str
) -> None:
    # An activity that outlives the worker grace: a drain would cancel it.
    manager = make_manager(worker_grace=1.0)
    await connected(manager)
    key = f"redial-{uuid.uuid4()}"
    workflows.LOGS[key] = workflows.ActivityLog()
    handle = await manager.client().start_workflow(
        workflows.SlowWorkflow.run, args=[key, 5.0], id=key, task_queue=task_queue
    )
    await asyncio.wait_for(workflows.LOGS[key].started.wait(), 20)
    worker = manager.workers[0].worker

    await manager.reconnect("test: settings changed")

    assert await asyncio.wait_for(handle.result(), 30) == key
    log = workflows.LOGS[key]
    assert not log.cancelled
    assert log.attempts == [1]  # finished once, on its first attempt
    assert manager.generation == 2
    assert manager.workers[0].worker is worker  # the same SDK Worker, on the new client
    assert worker is not None
    assert worker.client is manager.client()
    await round_trip(manager, task_queue)


async def test_a_worker_that_refuses_the_new_client_is_replaced_after_draining(
    make_manager: MakeManager, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = make_manager(worker_grace=10.0)
    await connected(manager)
    key = f"refuse-{uuid.uuid4()}"
    workflows.LOGS[key] = workflows.ActivityLog()
    handle = await manager.client().start_workflow(
        workflows.SlowWorkflow.run, args=[key, 2.0], id=key, task_queue=task_queue
    )
    await asyncio.wait_for(workflows.LOGS[key].started.wait(), 20)
    old = manager.workers[0]

    # The SDK refuses a client from another runtime under a running Worker:
    # the one case where the worker itself has to be replaced.
    async def dial_on_another_runtime() -> Client:
        runtime = Runtime(telemetry=TelemetryConfig())
        return await Client.connect(manager.settings.address, runtime=runtime)

    monkeypatch.setattr(manager.connection, "_dial", dial_on_another_runtime)
    await manager.reconnect("test: a client the worker refuses")

    assert manager.workers[0] is not old
    assert await asyncio.wait_for(handle.result(), 30) == key
    log = workflows.LOGS[key]
    assert not log.cancelled  # the old worker drained within the grace
    assert log.attempts == [1]
    await eventually(lambda: not old.running, what="the old worker stopped")
    await round_trip(manager, task_queue)  # served by the new worker


async def test_concurrent_reconnect_triggers_make_one_redial(make_manager: MakeManager) -> None:
    manager = make_manager()
    await connected(manager)
    assert manager.generation == 1
    dials_before = manager.status()["dial_attempts"]

    await asyncio.wait_for(
        asyncio.gather(*(manager.reconnect(f"trigger {n}") for n in range(100))), 30
    )

    assert manager.generation == 2
    assert manager.status()["dial_attempts"] == dials_before + 1
    assert manager.status()["redial_pending"] is None


async def test_rotated_api_key_is_applied_in_place(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    key = tmp_path / "api-key"
    key.write_text("first-key\n")
    manager = make_manager(api_key_file=key, tls=False)  # the dev server speaks plaintext
    await connected(manager)
    assert manager.client().api_key == "first-key"

    key.write_text("second-key\n")
    manager.check_settings()

    assert manager.client().api_key == "second-key"
    assert manager.generation == 1  # in place: no re-dial, workers untouched
    assert manager.status()["redial_pending"] is None


async def test_a_missing_namespace_is_its_own_state_until_it_is_created(
    temporal: TemporalDevServer, make_manager: MakeManager, task_queue: str
) -> None:
    namespace = f"ns-{uuid.uuid4().hex[:12]}"
    manager = make_manager(namespace=namespace, probe_interval_disconnected=0.05)
    seen: list[tuple[bool, str]] = []
    manager.add_listener(lambda state: seen.append((state.connected, state.reason)))

    await eventually(
        manager.status,
        lambda s: s.get("reason") == "NamespaceNotFound",
        timeout=10,
        what="reason NamespaceNotFound",
    )
    refused = manager.unavailable()
    assert refused.reason == "NamespaceNotFound"
    assert namespace in refused.message
    with pytest.raises(TemporalUnavailable):
        manager.client()
    assert metric(manager, "temporal_connection_status") == 0

    # The connection itself is fine: no re-dial, and no worker that fails and
    # restarts, however long the namespace stays missing.
    await asyncio.sleep(12)
    status = manager.status()
    assert (status["generation"], status["dial_attempts"]) == (1, 1), status
    assert status["redial_pending"] is None
    assert manager.worker_restarts == 0
    assert seen == [(False, "NamespaceNotFound")]

    # Created with the SDK's RPC rather than the CLI, so the manager's next
    # probe comes within milliseconds of the creation.
    admin = await Client.connect(temporal.address)
    await admin.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace,
            workflow_execution_retention_period=Duration(seconds=86400),
        )
    )
    await asyncio.wait_for(manager.wait_connected(), 15)
    # At once: when the manager says connected, every call sees the namespace
    # (the frontend's namespace cache learns of it later than DescribeNamespace).
    await round_trip(manager, task_queue)
    assert seen == [(False, "NamespaceNotFound"), (True, "Connected")]
    assert manager.generation == 1
    assert manager.worker_restarts == 0


async def test_a_frontend_answering_not_serving_is_unhealthy(
    tmp_path: Path, make_manager: MakeManager
) -> None:
    # A frontend that shuts down gracefully answers the health check with
    # NOT_SERVING for frontend.shutdownFailHealthCheckDuration while it still
    # serves every other call (what a load balancer drains on).
    port = free_port()
    server = ManagedProcess(
        "temporal-draining",
        [
            str(venv_tool("temporal")),
            *("server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless"),
            *("--log-level", "warn"),
            *("--dynamic-config-value", 'frontend.shutdownFailHealthCheckDuration="8s"'),
            *("--dynamic-config-value", 'frontend.shutdownDrainDuration="8s"'),
        ],
        tmp_path / "temporal.log",
    )
    server.start()
    try:
        manager = make_manager(f"127.0.0.1:{port}", probe_interval=0.5)
        await connected(manager, timeout=60)
        assert server.pid is not None
        os.killpg(server.pid, signal.SIGTERM)
        await disconnected(manager, timeout=5)  # the frontend answers for 8 s more
        assert "NOT_SERVING" in manager.status()["last_error"]
        assert server.running
    finally:
        server.kill()


async def test_a_probe_that_began_on_a_replaced_client_is_ignored(
    temporal: TemporalDevServer,
) -> None:
    relay = TcpRelay("127.0.0.1", temporal.port)
    await relay.start()
    settings = TemporalSettings(address=relay.address, probe_interval=0.2, probe_timeout=4.0)
    manager = TemporalManager(settings, (), Metrics())
    manager.start()
    try:
        await connected(manager)
        seen: list[tuple[bool, str]] = []
        manager.add_listener(lambda state: seen.append((state.connected, state.reason)))

        relay.freeze_existing()  # the current client's probe hangs; a new dial works
        await asyncio.sleep(0.5)  # a probe is in flight on the frozen connection
        await manager.reconnect("test: credentials changed")
        assert manager.generation == 2
        # The old probe times out after probe_timeout; its answer is about a
        # client nobody uses any more.
        await eventually(
            lambda: metric(manager, "temporal_health_probe_duration_seconds_sum"),
            lambda total: total >= settings.probe_timeout,
            timeout=10,
            what="the stale probe to end",
        )
        assert manager.connected
        assert seen == []
        assert metric(manager, "temporal_health_probe_failures_total") == 0
    finally:
        await manager.stop()
        await relay.stop()


async def test_a_blip_shorter_than_the_window_flips_nothing_and_an_outage_still_does(
    temporal: TemporalDevServer, make_manager: MakeManager, task_queue: str
) -> None:
    relay = TcpRelay("127.0.0.1", temporal.port)
    await relay.start()
    try:
        manager = make_manager(relay.address, probe_interval=0.5, probe_timeout=0.5, down_after=2.0)
        await connected(manager)
        seen: list[tuple[bool, str]] = []
        manager.add_listener(lambda state: seen.append((state.connected, state.reason)))
        failures = metric(manager, "temporal_health_probe_failures_total")
        downtime = manager.status()["downtime_seconds"]  # before the first connect

        # A blip: the server stops answering long enough for one probe to
        # fail (its 0.5 s deadline), then answers again.
        relay.blackhole()
        await eventually(
            lambda: metric(manager, "temporal_health_probe_failures_total"),
            lambda n: n > failures,
            timeout=5,
            interval=0.02,
            what="a failed probe",
        )
        relay.restore()
        await eventually(
            manager.status,
            lambda s: s["consecutive_failures"] == 0,
            timeout=5,
            what="a good probe again",
        )
        assert seen == []  # no listener heard of it: nothing rewrites executions
        assert manager.connected
        assert metric(manager, "temporal_connection_status") == 1
        assert manager.status()["downtime_seconds"] == downtime
        await round_trip(manager, task_queue)

        # An outage: called down once failures span the window.
        relay.blackhole()
        cut = time.monotonic()
        await disconnected(manager, timeout=15)
        detected = time.monotonic() - cut
        # Probe interval + window + a probe timeout + the fast re-probe, plus slack.
        assert 2.0 <= detected <= 0.5 + 2.0 + 0.5 + 0.1 + 1.0, detected
        assert seen == [(False, "TemporalUnavailable")]

        relay.restore()
        await connected(manager, timeout=30)  # up again on one good probe
        assert seen == [(False, "TemporalUnavailable"), (True, "Connected")]
    finally:
        await relay.stop()


async def test_with_the_default_window_a_killed_server_is_seen_within_about_two_seconds(
    temporal: TemporalDevServer, make_manager: MakeManager
) -> None:
    manager = make_manager()  # probe every 1 s, down after 1 s of failures
    assert manager.settings.down_after == 1.0
    await connected(manager)
    temporal.kill()
    cut = time.monotonic()
    await disconnected(manager, timeout=10)
    detected = time.monotonic() - cut
    # Probe interval + window + the fast re-probe (0.1 s), plus slack.
    assert detected <= 1.0 + 1.0 + 0.1 + 0.75, detected
