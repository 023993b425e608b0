"""The chat agent end to end: a real control plane, a Temporal dev server, the
operator process (its in-process runner off, as the chart runs it) and runner
processes given a providers file that points at llama.cpp's real
OpenAI-compatible server (localenv.openai_server, model "tiny")."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client

from agentexec.runner.providers import PROVIDERS_FILE_ENV, Provider, dump_providers
from localenv.binaries import ROOT
from localenv.kube import ControlPlane
from localenv.openai_server import MODEL, OpenAIServer
from localenv.pki import CertificateAuthority
from localenv.procs import free_port
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.e2e.test_agents import apply_agent
from tests.support.gateway import ApiKeyGateway, ConnectProxy
from tests.support.operator import OperatorProcess, RunnerProcess
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]
KEY = "sk-agentexec-e2e-6a0d3f9b27c4"
WRONG_KEY = "sk-agentexec-e2e-wrong-41c8e7a2"
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    with OpenAIServer(tmp_path_factory.mktemp("openai"), api_key=KEY) as server:
        yield server


def providers_file(directory: Path, base_url: str, key: str) -> Path:
    """A providers file naming provider 'local', its key in a file as a Secret mounts it."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "apiKey"
    key_file.write_text(key)
    path = directory / "providers.json"
    path.write_text(
        dump_providers({"local": Provider("local", base_url, key_file, timeout_seconds=10)})
    )
    return path


def chat_runner(
    tmp_path: Path, temporal: TemporalDevServer, queue: str, providers: Path
) -> RunnerProcess:
    runner = RunnerProcess(
        tmp_path, temporal.address, queue, env={PROVIDERS_FILE_ENV: str(providers)}
    )
    runner.start()
    return runner


def apply_chat_agent(plane: ControlPlane, namespace: str) -> None:
    apply_agent(
        plane, namespace, "assistant",
        type="chat", model=MODEL, provider="local", systemPrompt="Answer briefly.",
        parameters={"maxTokens": MAX_TOKENS, "temperature": 0},
    )  # fmt: skip


async def finished(
    plane: ControlPlane, namespace: str, name: str, timeout: float = 90
) -> dict[str, Any]:
    # The summary (phase, conditions, error) is what a timeout should show.
    await eventually(
        lambda: aex.summary(aex.get(plane, namespace, name)),
        lambda s: s["phase"] in ("Succeeded", "Failed", "Cancelled"),
        timeout=timeout,
        interval=0.3,
        what=f"{name} finished",
    )
    return aex.get(plane, namespace, name)


async def history(temporal: TemporalDevServer, obj: dict[str, Any]) -> dict[str, Any]:
    client = await Client.connect(temporal.address)
    fetched = await client.get_workflow_handle(obj["status"]["workflow"]["id"]).fetch_history()
    events: dict[str, Any] = json.loads(fetched.to_json())
    return events


def run_agent_started(events: dict[str, Any]) -> list[dict[str, Any]]:
    """The ActivityTaskStarted event of each attempt's run_agent activity (the
    workflow schedules one per attempt, never retried by Temporal), with the
    identity of the worker that ran it."""
    scheduled = {
        e["eventId"]
        for e in events["events"]
        if e.get("activityTaskScheduledEventAttributes", {}).get("activityType", {}).get("name")
        == "run_agent"
    }
    return [
        e["activityTaskStartedEventAttributes"]
        for e in events["events"]
        if e.get("activityTaskStartedEventAttributes", {}).get("scheduledEventId") in scheduled
    ]


async def test_a_chat_agent_answers_through_the_runner_with_its_usage(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    openai_server: OpenAIServer,
    tmp_path: Path,
) -> None:
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false")
    providers = providers_file(tmp_path / "providers", openai_server.base_url, KEY)
    runner = chat_runner(tmp_path, temporal, operator.runner_queue, providers)
    try:
        apply_chat_agent(control_plane, namespace)
        aex.create(control_plane, namespace, "ask", "What is an operator?", agent="assistant")
        done = await finished(control_plane, namespace, "ask")
        assert aex.phase(done) == "Succeeded", aex.summary(done)
        status = done["status"]
        assert status["output"].strip(), status
        usage = status["usage"]
        # The tiny model never stops early: exactly the Agent's maxTokens,
        # streamed (llama-cpp-python's server sends no counts in a stream:
        # the chunks are counted, the prompt is not known).
        assert usage["completionTokens"] == MAX_TOKENS, usage
        assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
        assert (usage["requests"], usage["resentRequests"]) == (1, 0), usage
        assert status["attempts"]["count"] == 1
        assert (
            'agentexec_runner_agent_attempts_total{agent="chat",outcome="succeeded"} 1.0'
            in (runner.get("/metrics")[1])
        )
        assert KEY not in json.dumps(await history(temporal, done))
    finally:
        runner.stop()


async def test_the_chat_agent_example_runs(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    openai_server: OpenAIServer,
    tmp_path: Path,
) -> None:
    """examples/chat-agent.yaml, as `make run` serves it (provider local, model tiny)."""
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false")
    providers = providers_file(tmp_path / "providers", openai_server.base_url, KEY)
    runner = chat_runner(tmp_path, temporal, operator.runner_queue, providers)
    try:
        example = ROOT / "examples" / "chat-agent.yaml"
        control_plane.kubectl("apply", "-n", namespace, "-f", str(example))
        done = await finished(control_plane, namespace, "hello-assistant")
        assert aex.phase(done) == "Succeeded", aex.summary(done)
        agent = next(d for d in yaml.safe_load_all(example.read_text()) if d["kind"] == "Agent")
        max_tokens = agent["spec"]["parameters"]["maxTokens"]
        assert done["status"]["usage"]["completionTokens"] == max_tokens
    finally:
        runner.stop()


async def test_a_provider_that_is_down_fails_unavailable_after_bounded_retries(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    tmp_path: Path,
) -> None:
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false")
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    providers = providers_file(tmp_path / "providers", closed, KEY)
    runner = chat_runner(tmp_path, temporal, operator.runner_queue, providers)
    try:
        apply_chat_agent(control_plane, namespace)
        # Its own deadline (over the Agent's): re-sent inside the one attempt
        # until then, with backoffLimit untouched.
        aex.create(
            control_plane, namespace, "ask-down", "hello?", agent="assistant",
            activeDeadlineSeconds=10,
        )  # fmt: skip
        done = await finished(control_plane, namespace, "ask-down")
        assert aex.phase(done) == "Failed", aex.summary(done)
        assert done["status"]["error"]["reason"] == "ProviderUnavailable", done["status"]
        assert "could not reach provider 'local'" in done["status"]["error"]["message"]
        assert len(run_agent_started(await history(temporal, done))) == 1
        assert done["status"]["attempts"]["failed"] == 0
        assert done["status"]["usage"]["requests"] >= 3, done["status"]["usage"]
    finally:
        runner.stop()


async def test_a_refused_key_fails_rejected_with_the_providers_words_and_the_key_nowhere(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    openai_server: OpenAIServer,
    tmp_path: Path,
) -> None:
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false")
    providers = providers_file(tmp_path / "providers", openai_server.base_url, WRONG_KEY)
    runner = chat_runner(tmp_path, temporal, operator.runner_queue, providers)
    try:
        apply_chat_agent(control_plane, namespace)
        aex.create(control_plane, namespace, "ask-refused", "hello?", agent="assistant")
        done = await finished(control_plane, namespace, "ask-refused")
        assert aex.phase(done) == "Failed", aex.summary(done)
        error = done["status"]["error"]
        assert error["reason"] == "ProviderRejected", error
        assert "HTTP 401" in error["message"], error
        assert "Invalid API key" in error["message"], error  # llama-cpp-python's own words
        events = await history(temporal, done)
        assert len(run_agent_started(events)) == 1, "a rejection is not retried"
        await eventually(
            lambda: control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
            lambda text: "ProviderRejected" in text,
            timeout=20,
            what="a ProviderRejected event",
        )
        seen = {
            "status": json.dumps(done["status"]),
            "events": control_plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout,
            "operator log": operator.log(),
            "runner log": runner.log(),
            "workflow history": json.dumps(events),
        }
        for where, text in seen.items():
            for key in (WRONG_KEY, KEY):
                assert key not in text, f"a key in the {where}"
    finally:
        runner.stop()


async def test_a_runner_killed_mid_agent_is_retried_once_on_the_other_runner(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    tmp_path: Path,
) -> None:
    # The operator puts the heartbeat timeout in the workflow input.
    operator = make_operator(
        AGENTEXEC_RUNNER_ENABLED="false", AGENTEXEC_RUNNER_HEARTBEAT_TIMEOUT_SECONDS="3"
    )
    queue = operator.runner_queue
    runners = [RunnerProcess(tmp_path, temporal.address, queue, name=n) for n in ("ra", "rb")]
    for runner in runners:
        runner.start()
    try:
        apply_agent(
            control_plane, namespace, "slow", type="echo", parameters={"delaySeconds": 8},
            timeoutSeconds=120,
        )  # fmt: skip
        aex.create(control_plane, namespace, "survive", "still here", agent="slow")
        busy = await eventually(
            lambda: [r for r in runners if r.statusz()["runner"]["in_flight"] == 1],
            lambda found: len(found) == 1,
            timeout=30,
            interval=0.2,
            what="one runner running the agent",
        )
        victim = busy[0]
        [survivor] = [r for r in runners if r is not victim]
        victim.kill()  # SIGKILL: no drain, no failure reported, only silence
        # 3 s of silence, then at once the 8 s agent again: well within 30 s,
        # and not with the default 30 s heartbeat timeout.
        done = await finished(control_plane, namespace, "survive", timeout=30)
        assert aex.phase(done) == "Succeeded", aex.summary(done)
        assert done["status"]["output"] == "still here"
        # A disruption: the killed attempt, then this one; backoffLimit untouched.
        attempts = done["status"]["attempts"]
        assert (attempts["count"], attempts["failed"], attempts["disrupted"]) == (2, 0, 1)
        assert attempts["lastDisruption"]["reason"] == "HeartbeatTimeout"

        events = await history(temporal, done)
        [killed, started] = run_agent_started(events)
        assert killed["identity"] != started["identity"]
        assert started["identity"] == survivor.statusz()["identity"]
        runs = await aex.workflow_runs(temporal.address, operator.task_queue)
        assert runs == {done["status"]["workflow"]["id"]: 1}
        assert (
            'agentexec_runner_agent_attempts_total{agent="echo",outcome="succeeded"} 1.0'
            in (survivor.get("/metrics")[1])
        )
    finally:
        for runner in runners:
            runner.stop()


GATEWAY_KEY = "azure-key-0b7c2e19f4d84a6e"
PROXY_LOGIN = "agents:pr0xy-s3cret"


async def test_a_chat_through_a_connect_proxy_to_a_private_ca_provider_with_an_api_key_header(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    openai_server: OpenAIServer,
    tmp_path: Path,
) -> None:
    """Issue #21: the runner reaches its provider only through the platform's
    HTTP proxy (proxy.py, CONNECT, with a login), the provider's certificate
    is signed by a private CA that only the provider's caFile trusts, and it
    takes its key Azure-style in an `api-key` header (a Bearer token is
    refused). The model behind it is llama.cpp's real server."""
    ca = CertificateAuthority(tmp_path / "pki", "agentexec-e2e-private-ca")
    gateway = ApiKeyGateway(
        openai_server.base_url, KEY, GATEWAY_KEY,
        ca.issue("gateway", "localhost", server_hosts=("localhost", "127.0.0.1")),
    )  # fmt: skip
    await gateway.start()
    proxy = ConnectProxy(tmp_path / "proxy", credentials=PROXY_LOGIN)
    proxy.start()
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false")
    keys = tmp_path / "providers"
    keys.mkdir()
    (keys / "apiKey").write_text(GATEWAY_KEY)
    providers = keys / "providers.yaml"
    providers.write_text(
        yaml.safe_dump(
            {"providers": {"azure": {
                "baseURL": gateway.base_url, "apiKeyFile": str(keys / "apiKey"),
                "apiKeyHeader": "api-key", "caFile": str(ca.cert_path), "timeoutSeconds": 30,
            }}}
        )
    )  # fmt: skip
    runner = RunnerProcess(
        tmp_path, temporal.address, operator.runner_queue,
        env={PROVIDERS_FILE_ENV: str(providers), "HTTPS_PROXY": proxy.url,
             "NO_PROXY": "models.example.internal"},
    )  # fmt: skip
    runner.start()
    try:
        apply_agent(
            control_plane, namespace, "azure-assistant",
            type="chat", model=MODEL, provider="azure", systemPrompt="Answer briefly.",
            parameters={"maxTokens": MAX_TOKENS, "temperature": 0},
        )  # fmt: skip
        aex.create(control_plane, namespace, "via-proxy", "Hello?", agent="azure-assistant")
        done = await finished(control_plane, namespace, "via-proxy")
        assert aex.phase(done) == "Succeeded", aex.summary(done)
        assert done["status"]["usage"]["completionTokens"] == MAX_TOKENS
        # Through the proxy (its access log has the tunnel), to the gateway,
        # which let the api-key header in and refused nothing.
        assert proxy.tunnels(at_least=1) == [f"localhost:{gateway.port}"]
        assert (gateway.served, gateway.refused) == (1, 0)
        log = runner.log()
        assert "pr0xy-s3cret" not in log
        assert GATEWAY_KEY not in log
        assert GATEWAY_KEY not in json.dumps(await history(temporal, done))
        checked = runner.check_config()
        assert checked.returncode == 0, checked.stderr
        assert "HTTPS_PROXY" in checked.stdout
        assert "pr0xy-s3cret" not in checked.stdout
    finally:
        runner.stop()
        proxy.stop()
        await gateway.stop()
