"""The chat agent against a real OpenAI-compatible server (llama.cpp's).

The server is localenv.openai_server (built once into .cache); the agent runs
in the real runner activity, and for the success, rejected and down cases
through the real workflow on a Temporal dev server, so that the failure
reasons and the retries are the ones an AgentExecution gets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from agentexec.runner.activity import RunnerActivities
from agentexec.runner.chat import ChatAgent, call_provider
from agentexec.runner.providers import Provider, dump_providers, parse_providers
from agentexec.settings import ProxySettings
from agentexec.temporal.types import (
    EXECUTION_FAILED,
    REPORT_STATUS_ACTIVITY,
    AgentRequest,
    AgentSpec,
    ExecutionInput,
    ExecutionRef,
    ExecutionResult,
    StatusReport,
)
from agentexec.temporal.workflows import AgentExecutionWorkflow
from localenv.openai_server import MODEL, OpenAIServer
from localenv.pki import CertificateAuthority
from localenv.procs import free_port
from localenv.temporal import TemporalDevServer
from tests.support.gateway import ApiKeyGateway, ConnectProxy
from tests.support.relay import TcpRelay

KEY = "sk-agentexec-test-5f1c0d9e7a3b"
WRONG_KEY = "sk-agentexec-wrong-88e2b4c6d1f0"
PARAMS = {"temperature": 0, "maxTokens": 8, "seed": 7}


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    server = OpenAIServer(tmp_path_factory.mktemp("openai"), api_key=KEY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def providers_file(tmp_path: Path, base_url: str, key: str, timeout: float = 30) -> Path:
    key_file = tmp_path / "apiKey"  # as a Secret mounts it
    key_file.write_text(key)
    path = tmp_path / "providers.json"
    path.write_text(
        dump_providers({"local": Provider("local", base_url, key_file, timeout_seconds=timeout)})
    )
    return path


def request(**kw: Any) -> AgentRequest:
    params = {"model": MODEL, "provider": "local", "systemPrompt": "answer briefly", **PARAMS}
    return AgentRequest("chat", "say hello", parameters=params, **kw)


async def run_workflow(
    temporal: TemporalDevServer, task_queue: str, agent: ChatAgent, inp: dict[str, Any]
) -> tuple[ExecutionResult, str]:
    """Run one execution through the real workflow and runner activity; return
    the result reported to the resource and the workflow's history as JSON."""
    reports: list[ExecutionResult] = []

    @activity.defn(name=REPORT_STATUS_ACTIVITY)
    async def report_status(report: StatusReport) -> None:
        reports.append(report.result)

    client = await Client.connect(temporal.address)
    runner_queue = f"{task_queue}-runner"
    async with (
        Worker(
            client,
            task_queue=task_queue,
            workflows=[AgentExecutionWorkflow],
            activities=[report_status],
        ),
        Worker(
            client,
            task_queue=runner_queue,
            activities=[RunnerActivities({"chat": agent}).run_agent],
        ),
    ):
        handle = await client.start_workflow(
            AgentExecutionWorkflow.run,
            ExecutionInput(
                ref=ExecutionRef("chat", task_queue, str(uuid.uuid4())),
                agent="chat",
                runner_task_queue=runner_queue,
                timeout_seconds=120,
                **inp,
            ),
            id=f"chat-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        failure: BaseException | None = None
        try:
            await asyncio.wait_for(handle.result(), 90)
        except WorkflowFailureError as err:
            failure = err.cause
        history = await handle.fetch_history()
    assert reports, "the workflow ended without reporting"
    if failure is not None:
        # A failed agent fails the workflow too (after reporting).
        assert isinstance(failure, ApplicationError), failure
        assert failure.type == EXECUTION_FAILED, failure
    return reports[-1], history.to_json()


def attempts(history_json: str) -> int:
    events = json.loads(history_json)["events"]
    return max(
        (
            int(e["activityTaskStartedEventAttributes"].get("attempt", 1))
            for e in events
            if "activityTaskStartedEventAttributes" in e
        ),
        default=0,
    )


async def test_a_chat_completes_with_its_usage_through_the_workflow(
    temporal: TemporalDevServer,
    task_queue: str,
    openai_server: OpenAIServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = ChatAgent(providers_file(tmp_path, openai_server.base_url, KEY))
    spec = AgentSpec(
        name="greeter", type="chat", model=MODEL, system_prompt="answer briefly", provider="local"
    )
    result, history = await run_workflow(
        temporal,
        task_queue,
        agent,
        {"message": "say hello", "parameters": PARAMS, "agent_spec": spec},
    )
    assert (result.phase, result.reason) == ("Succeeded", None), result
    assert result.output, result
    usage = result.usage
    assert usage is not None, result
    # The tiny model never ends early: it answers exactly maxTokens tokens.
    assert usage.completion_tokens == PARAMS["maxTokens"]
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Greedy decoding on a fixed model: the same question, the same answer.
    again = await agent.run(request())
    assert again.output == result.output
    assert KEY not in history
    assert KEY not in caplog.text


async def test_a_wrong_key_is_rejected_once_with_the_providers_words_and_no_key(
    temporal: TemporalDevServer,
    task_queue: str,
    openai_server: OpenAIServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = ChatAgent(providers_file(tmp_path, openai_server.base_url, WRONG_KEY))
    result, history = await run_workflow(
        temporal,
        task_queue,
        agent,
        {"message": "say hello", "parameters": request().parameters},
    )
    assert (result.phase, result.reason) == ("Failed", "ProviderRejected"), result
    message = result.message or ""
    assert "HTTP 401" in message, result
    assert "Invalid API key" in message, result  # llama-cpp-python's own words
    assert attempts(history) == 1, "a rejection must not be retried"
    for secret in (WRONG_KEY, KEY):
        assert secret not in message
        assert secret not in history
        assert secret not in caplog.text
    assert "ProviderRejected" in history


async def test_a_provider_that_is_down_is_unavailable_after_bounded_retries(
    temporal: TemporalDevServer, task_queue: str, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    agent = ChatAgent(providers_file(tmp_path, closed, KEY))
    started = time.monotonic()
    result, history = await run_workflow(
        temporal,
        task_queue,
        agent,
        {"message": "say hello", "parameters": request().parameters},
    )
    assert (result.phase, result.reason) == ("Failed", "ProviderUnavailable"), result
    assert "could not reach provider 'local'" in (result.message or ""), result
    assert attempts(history) == 3, "unavailable is retried, up to the policy's 3 attempts"
    assert time.monotonic() - started < 60
    assert KEY not in history


@pytest.fixture
async def relay(openai_server: OpenAIServer) -> AsyncIterator[TcpRelay]:
    relay = TcpRelay("127.0.0.1", openai_server.port)
    await relay.start()
    try:
        yield relay
    finally:
        relay.restore()  # let blackholed connections end, then close them
        await relay.stop()


async def test_a_provider_that_does_not_answer_times_out_as_unavailable(
    openai_server: OpenAIServer, relay: TcpRelay, tmp_path: Path
) -> None:
    base_url = f"http://{relay.address}/v1"
    agent = ChatAgent(providers_file(tmp_path, base_url, KEY, timeout=1))
    assert (await agent.run(request())).output  # through the relay it answers
    relay.blackhole()
    started = time.monotonic()
    with pytest.raises(ApplicationError) as err:
        await agent.run(request())
    elapsed = time.monotonic() - started
    assert err.value.type == "ProviderUnavailable"
    assert not err.value.non_retryable
    assert "did not answer within timeoutSeconds=1" in err.value.message
    assert 0.9 < elapsed < 10, elapsed


async def test_a_rotated_key_is_used_at_the_next_call(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    agent = ChatAgent(providers_file(tmp_path, openai_server.base_url, WRONG_KEY))
    with pytest.raises(ApplicationError, match="HTTP 401"):
        await agent.run(request())
    (tmp_path / "apiKey").write_text(KEY)  # the kubelet updates the mounted Secret
    assert (await agent.run(request())).usage is not None


@pytest.fixture
async def echoing_provider() -> AsyncIterator[str]:
    """A provider that quotes the credentials it got back in its errors (some do)."""

    async def chat(req: web.Request) -> web.Response:
        said = req.headers.get("Authorization", "")
        return web.json_response(
            {"error": {"message": f"rejected {said}; key {said.removeprefix('Bearer ')}"}},
            status=403,
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def test_a_key_the_provider_quotes_back_reaches_neither_status_nor_history_nor_logs(
    temporal: TemporalDevServer,
    task_queue: str,
    echoing_provider: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = ChatAgent(providers_file(tmp_path, echoing_provider, KEY))
    result, history = await run_workflow(
        temporal,
        task_queue,
        agent,
        {"message": "say hello", "parameters": request().parameters},
    )
    assert (result.phase, result.reason) == ("Failed", "ProviderRejected"), result
    message = result.message or ""
    assert message.startswith("provider 'local' answered HTTP 403: rejected Bearer [REDACTED]")
    assert attempts(history) == 1
    assert KEY not in message
    assert KEY not in history
    assert KEY not in caplog.text


async def test_a_429_waits_as_long_as_its_retry_after_before_the_next_attempt(
    temporal: TemporalDevServer, task_queue: str, tmp_path: Path
) -> None:
    seen: list[float] = []

    async def chat(_: web.Request) -> web.Response:
        seen.append(time.monotonic())
        if len(seen) == 1:
            return web.json_response(
                {"error": {"message": "rate limited"}}, status=429, headers={"Retry-After": "4"}
            )
        return web.json_response({"choices": [{"message": {"content": "hello"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = web.AppRunner(app)
    await server.setup()
    await web.TCPSite(server, "127.0.0.1", 0).start()
    base_url = f"http://127.0.0.1:{server.addresses[0][1]}/v1"
    try:
        agent = ChatAgent(providers_file(tmp_path, base_url, KEY))
        result, history = await run_workflow(
            temporal, task_queue, agent, {"message": "hi", "parameters": request().parameters}
        )
    finally:
        await server.cleanup()
    assert (result.phase, result.output) == ("Succeeded", "hello"), result
    assert attempts(history) == 2
    # The retry policy alone would have retried after 1 s.
    assert seen[1] - seen[0] >= 3.5, seen


GATEWAY_KEY = "azure-key-7d41c0a9e2b35f86"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
async def private_gateway(
    openai_server: OpenAIServer, tmp_path: Path
) -> AsyncIterator[tuple[ApiKeyGateway, Path]]:
    """The model server behind an api-key gateway whose certificate a private
    CA signed; yields it and the CA's bundle."""
    ca = CertificateAuthority(tmp_path / "pki", "agentexec-private-ca")
    cert = ca.issue("gateway", "localhost", server_hosts=("localhost", "127.0.0.1"))
    gateway = ApiKeyGateway(openai_server.base_url, KEY, GATEWAY_KEY, cert)
    await gateway.start()
    try:
        yield gateway, ca.cert_path
    finally:
        await gateway.stop()


@pytest.fixture
def connect_proxy(tmp_path: Path) -> Iterator[ConnectProxy]:
    proxy = ConnectProxy(tmp_path / "proxy", credentials="agents:pr0xy-s3cret")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def azure(base_url: str, ca: Path | None, proxies: ProxySettings | None, **entry: Any) -> Provider:
    return parse_providers(
        {"providers": {"azure": {"baseURL": base_url, "apiKeyHeader": "api-key",
                                 **({"caFile": str(ca)} if ca else {}), **entry}}},
        proxies=proxies,
    )["azure"]  # fmt: skip


async def test_each_of_the_ca_the_key_header_and_the_proxy_login_is_needed(
    private_gateway: tuple[ApiKeyGateway, Path], connect_proxy: ConnectProxy
) -> None:
    """What the e2e proxy test (tests/e2e/test_chat.py) depends on, one piece
    missing at a time: each fails, saying why, and shows no secret."""
    gateway, ca = private_gateway
    proxies = ProxySettings(https=connect_proxy.url)
    answered = await call_provider(azure(gateway.base_url, ca, proxies), GATEWAY_KEY, BODY)
    assert answered.usage is not None
    assert answered.usage.completion_tokens == 4
    assert connect_proxy.tunnels(at_least=1) == [f"localhost:{gateway.port}"]

    # The system roots do not know the private CA.
    with pytest.raises(ApplicationError) as untrusted:
        await call_provider(azure(gateway.base_url, None, proxies), GATEWAY_KEY, BODY)
    assert untrusted.value.type == "ProviderUnavailable"
    assert "certificate verify failed" in untrusted.value.message

    # The key as a Bearer token (no apiKeyHeader): the gateway refuses it.
    bearer = parse_providers(
        {"providers": {"azure": {"baseURL": gateway.base_url, "caFile": str(ca)}}},
        proxies=proxies,
    )["azure"]
    with pytest.raises(ApplicationError) as refused:
        await call_provider(bearer, GATEWAY_KEY, BODY)
    assert refused.value.type == "ProviderRejected"
    assert "HTTP 401: Access denied" in refused.value.message
    assert GATEWAY_KEY not in refused.value.message

    # A wrong proxy login: the proxy refuses the tunnel (407).
    wrong = ProxySettings(https=connect_proxy.url.replace("pr0xy-s3cret", "wrong-pass"))
    with pytest.raises(ApplicationError) as denied:
        await call_provider(azure(gateway.base_url, ca, wrong), GATEWAY_KEY, BODY)
    assert denied.value.type == "ProviderUnavailable"
    assert "407" in denied.value.message
    assert "wrong-pass" not in denied.value.message
    assert "pr0xy-s3cret" not in denied.value.message
    assert (gateway.served, gateway.refused) == (1, 1)


async def test_no_proxy_names_the_hosts_called_directly(
    private_gateway: tuple[ApiKeyGateway, Path], connect_proxy: ConnectProxy
) -> None:
    gateway, ca = private_gateway
    direct = azure(
        gateway.base_url,
        ca,
        ProxySettings(https=connect_proxy.url, no_proxy="example.com,localhost"),
    )
    assert direct.proxy is None
    await call_provider(direct, GATEWAY_KEY, BODY)
    # Then one through the proxy: its tunnel is the only one logged.
    await call_provider(
        azure(gateway.base_url, ca, ProxySettings(https=connect_proxy.url)), GATEWAY_KEY, BODY
    )
    assert connect_proxy.tunnels(at_least=1) == [f"localhost:{gateway.port}"]
    assert gateway.served == 2
