"""Payloads encrypted at rest (issue #22): the operator's workflow on a client
with the codec, runners (`agentexec-operator runner` and a program on the
public runner API) as real processes with the keys, a real Temporal dev
server, and its history read back raw, with the `temporal` CLI, and through
`agentexec-operator codec-server`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from agentexec.temporal.codec import ENCODING, KEY_ID_KEY, build_codec, build_data_converter
from agentexec.temporal.types import (
    REPORT_STATUS_ACTIVITY,
    ExecutionInput,
    ExecutionRef,
    ExecutionResult,
    StatusReport,
)
from agentexec.temporal.workflows import AgentExecutionWorkflow
from localenv.procs import ManagedProcess, free_port, wait_for
from localenv.temporal import TemporalDevServer
from tests.support.operator import RunnerProcess
from tests.support.waiting import eventually

AGENTS = Path(__file__).parents[1] / "support" / "programs" / "runner_agents.py"
SECRET = "prompt-7f3a-nobody-else-reads"


def add_key(directory: Path, key_id: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / key_id).write_text(base64.b64encode(os.urandom(32)).decode())


class Encrypted:
    """The operator's side: its workflow (report_status kept in memory) on a
    client that encrypts with ``current``, and runners given the same keys."""

    def __init__(self, temporal: TemporalDevServer, task_queue: str, keys: Path) -> None:
        self.temporal = temporal
        self.task_queue = task_queue
        self.runner_queue = f"{task_queue}-runner"
        self.keys = keys
        self.reports: list[ExecutionResult] = []

    async def client(self, current: str) -> Client:
        converter = build_data_converter(build_codec(self.keys, current))
        return await Client.connect(self.temporal.address, data_converter=converter)

    def env(self, current: str) -> dict[str, str]:
        return {"AGENTEXEC_PAYLOAD_KEYS_DIR": str(self.keys), "AGENTEXEC_PAYLOAD_KEY_ID": current}

    def runner(self, tmp_path: Path, name: str, current: str, api: bool = False) -> RunnerProcess:
        argv = [sys.executable, str(AGENTS), self.runner_queue] if api else None
        return RunnerProcess(
            tmp_path, self.temporal.address, self.runner_queue, self.env(current), argv, name
        )

    async def start(
        self, client: Client, agent: str, message: str, **parameters: Any
    ) -> WorkflowHandle[Any, ExecutionResult]:
        return await client.start_workflow(
            AgentExecutionWorkflow.run,
            ExecutionInput(
                ref=ExecutionRef("codec", self.task_queue, str(uuid.uuid4())),
                agent=agent,
                message=message,
                runner_task_queue=self.runner_queue,
                timeout_seconds=120,
                parameters=parameters,
            ),
            id=f"codec-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )


@pytest.fixture
async def encrypted(
    temporal: TemporalDevServer, task_queue: str, tmp_path: Path
) -> AsyncIterator[Encrypted]:
    add_key(tmp_path / "keys", "k1")
    enc = Encrypted(temporal, task_queue, tmp_path / "keys")

    @activity.defn(name=REPORT_STATUS_ACTIVITY)
    async def report_status(report: StatusReport) -> None:
        enc.reports.append(report.result)

    async with Worker(
        await enc.client("k1"),
        task_queue=task_queue,
        workflows=[AgentExecutionWorkflow],
        activities=[report_status],
    ):
        yield enc


@pytest.fixture
def runners() -> Iterator[list[RunnerProcess]]:
    started: list[RunnerProcess] = []
    yield started
    for runner in started:
        runner.stop()


SDK_BOOKKEEPING = {
    EventType.EVENT_TYPE_MARKER_RECORDED,
    EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
}


def payloads_of(history: Any) -> list[Payload]:
    """Every Payload anywhere in a fetched history's events."""
    found: list[Payload] = []

    def walk(message: Any) -> None:
        if isinstance(message, Payload):
            found.append(message)
            return
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            if hasattr(value, "ListFields"):
                items = [value]
            elif hasattr(value, "values"):  # a map
                items = list(value.values())
            else:  # repeated
                items = list(value)
            for item in items:
                if hasattr(item, "ListFields"):
                    walk(item)

    for event in history.events:
        # The SDK's own version markers (workflow.patched) and their search
        # attribute are not payloads of ours, and not given to the codec.
        if event.event_type not in SDK_BOOKKEEPING:
            walk(event)
    return found


def cli_history(temporal: TemporalDevServer, workflow_id: str, *extra: str) -> str:
    out = temporal.cli_run(
        "workflow", "show", "--workflow-id", workflow_id, "--output", "json", *extra
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def decoded_data(text: str) -> bytes:
    """Every base64 `data` field of the CLI's JSON, decoded and joined."""
    found: list[bytes] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    found.append(base64.b64decode(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(text))
    return b"\n".join(found)


async def test_histories_hold_no_plaintext_and_the_codec_server_reads_them(
    encrypted: Encrypted,
    runners: list[RunnerProcess],
    temporal: TemporalDevServer,
    tmp_path: Path,
) -> None:
    runner = encrypted.runner(tmp_path, "runner", "k1")
    runners.append(runner)
    runner.start()
    client = await encrypted.client("k1")
    handle = await encrypted.start(client, "echo", SECRET)
    result = await asyncio.wait_for(handle.result(), 60)
    assert (result.phase, result.output) == ("Succeeded", SECRET)
    assert encrypted.reports == [result]

    # Raw: every payload of the history (the input, the agent's request and
    # answer, the report, the result) is sealed with k1.
    plain = await Client.connect(temporal.address)
    payloads = payloads_of(await plain.get_workflow_handle(handle.id).fetch_history())
    assert len(payloads) >= 5
    assert {(p.metadata["encoding"], p.metadata[KEY_ID_KEY]) for p in payloads} == {
        (ENCODING, b"k1")
    }
    assert SECRET.encode() not in b"".join(p.SerializeToString() for p in payloads)

    # The temporal CLI, as an operator would read it: no plaintext.
    shown = cli_history(temporal, handle.id)
    assert SECRET not in shown
    assert SECRET.encode() not in decoded_data(shown)

    # Through the codec server (temporal --codec-endpoint): readable, with
    # its bearer token only.
    token = tmp_path / "token"
    token.write_text("codec-token-5c1e")
    port = free_port()
    server = ManagedProcess(
        "codec-server",
        [
            str(Path(sys.executable).parent / "agentexec-operator"),
            "codec-server",
            "--port",
            str(port),
            "--auth-token-file",
            str(token),
        ],
        tmp_path / "codec.log",
        env={**os.environ, **encrypted.env("k1"), "LOG_FORMAT": "text"},
    )
    server.start()
    try:
        wait_for(lambda: _listening(port), 30, "the codec server", 0.2)
        endpoint = ("--codec-endpoint", f"http://127.0.0.1:{port}")
        readable = cli_history(
            temporal, handle.id, *endpoint, "--codec-auth", "Bearer codec-token-5c1e"
        )
        assert SECRET.encode() in decoded_data(readable)
        # Without the token: refused (the CLI retries until its deadline).
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/decode", json={"payloads": []}) as refused,
        ):
            assert refused.status == 401
    finally:
        server.stop()


def _listening(port: int) -> bool:
    from localenv.procs import port_open

    return port_open(port)


async def test_heartbeat_details_are_encrypted_too(
    encrypted: Encrypted, runners: list[RunnerProcess], temporal: TemporalDevServer, tmp_path: Path
) -> None:
    # The public runner API (serve()) with the keys from its environment; the
    # checkpointed agent records the message as its checkpoint, then waits.
    runner = encrypted.runner(tmp_path, "api-runner", "k1", api=True)
    runners.append(runner)
    runner.start()
    handle = await encrypted.start(await encrypted.client("k1"), "checkpointed", SECRET)
    raw = (await Client.connect(temporal.address)).get_workflow_handle(handle.id)

    async def details() -> list[Payload]:
        desc = await raw.describe()
        pending = list(desc.raw_description.pending_activities)
        return list(pending[0].heartbeat_details.payloads) if pending else []

    # [checkpoint, progress], each sealed.
    checkpoint, progress = await eventually(details, bool, timeout=30, what="a checkpoint")
    for payload in (checkpoint, progress):
        assert payload.metadata["encoding"] == ENCODING
        assert SECRET.encode() not in payload.SerializeToString()
    await handle.terminate("done")


async def test_rotating_the_key_with_executions_running_loses_nothing(
    encrypted: Encrypted, runners: list[RunnerProcess], temporal: TemporalDevServer, tmp_path: Path
) -> None:
    old = encrypted.runner(tmp_path, "old", "k1")
    runners.append(old)
    old.start()
    before = [
        await encrypted.start(await encrypted.client("k1"), "echo", f"before-{n}", delaySeconds=3)
        for n in range(6)
    ]
    # 1. The new key goes into the Secret (every process may decrypt with it);
    # 2. new processes encrypt with it while the old ones still run.
    add_key(encrypted.keys, "k2")
    new = encrypted.runner(tmp_path, "new", "k2")
    runners.append(new)
    new.start()
    after = [
        await encrypted.start(await encrypted.client("k2"), "echo", f"after-{n}", delaySeconds=3)
        for n in range(6)
    ]
    # The old runner is rolled out mid-flight: its agents finish in its grace.
    old.stop()
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in before + after)), 90)
    assert [r.output for r in results] == [f"before-{n}" for n in range(6)] + [
        f"after-{n}" for n in range(6)
    ]
    assert all(r.phase == "Succeeded" for r in results)
    raw = await Client.connect(temporal.address)
    seen: set[bytes] = set()
    for handle in before + after:
        history = await raw.get_workflow_handle(handle.id).fetch_history()
        seen |= {p.metadata[KEY_ID_KEY] for p in payloads_of(history)}
    assert seen == {b"k1", b"k2"}
