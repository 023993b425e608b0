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
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from agentexec.runner.activity import RunnerActivities
from agentexec.runner.chat import ChatAgent
from agentexec.runner.provider_call import ProviderCall, complete
from agentexec.runner.providers import Provider, dump_providers, parse_providers
from agentexec.settings import ProxySettings
from agentexec.temporal.types import (
    EXECUTION_FAILED,
    RUN_AGENT_ACTIVITY,
    AgentRequest,
    AgentSpec,
    ExecutionInput,
    ExecutionRef,
    ExecutionResult,
)
from agentexec.temporal.workflows import AgentExecutionWorkflow
from localenv.openai_server import MODEL, OpenAIServer
from localenv.pki import CertificateAuthority
from localenv.procs import free_port
from localenv.temporal import TemporalDevServer
from tests.support.gateway import ApiKeyGateway, ConnectProxy
from tests.support.relay import ModelRelay, TcpRelay
from tests.support.workflows import workflow_worker

KEY = "sk-agentexec-test-5f1c0d9e7a3b"
WRONG_KEY = "sk-agentexec-wrong-88e2b4c6d1f0"
PARAMS = {"temperature": 0, "maxTokens": 8, "seed": 7}


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    with OpenAIServer(tmp_path_factory.mktemp("openai"), api_key=KEY) as server:
        yield server


def providers_file(tmp_path: Path, base_url: str, key: str, **settings: Any) -> Path:
    key_file = tmp_path / "apiKey"  # as a Secret mounts it
    key_file.write_text(key)
    path = tmp_path / "providers.json"
    path.write_text(dump_providers({"local": Provider("local", base_url, key_file, **settings)}))
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
    client = await Client.connect(temporal.address)
    runner_queue = f"{task_queue}-runner"
    async with (
        workflow_worker(client, task_queue, lambda r: reports.append(r.result)),
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
                **{"timeout_seconds": 120, **inp},
            ),
            id=f"chat-{uuid.uuid4()}",
            task_queue=task_queue,
        )
        failure: BaseException | None = None
        try:
            await asyncio.wait_for(handle.result(), 150)
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
    """How many run_agent attempts the workflow made (an activity each)."""
    events = json.loads(history_json)["events"]
    return sum(
        1
        for e in events
        if e.get("activityTaskScheduledEventAttributes", {}).get("activityType", {}).get("name")
        == RUN_AGENT_ACTIVITY
    )


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
async def test_a_chat_completes_with_its_usage_through_the_workflow(
    temporal: TemporalDevServer,
    task_queue: str,
    openai_server: OpenAIServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    agent = ChatAgent(providers_file(tmp_path, openai_server.base_url, KEY, stream=stream))
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
    # The tiny model never ends early: it answers exactly maxTokens tokens
    # (streamed, counted by chunk: llama-cpp-python's server ignores
    # stream_options.include_usage and sends no counts in a stream).
    assert usage.completion_tokens == PARAMS["maxTokens"]
    assert (usage.requests, usage.resent_requests) == (1, 0)
    if not stream:
        assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Greedy decoding on a fixed model: the same question, the same answer,
    # streamed or not.
    again = await ChatAgent(providers_file(tmp_path, openai_server.base_url, KEY)).run(request())
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
        {"message": "say hello", "parameters": request().parameters, "timeout_seconds": 8},
    )
    assert (result.phase, result.reason) == ("Failed", "ProviderUnavailable"), result
    assert "could not reach provider 'local'" in (result.message or ""), result
    assert "not re-sent" in (result.message or ""), result
    # Re-sent inside the one attempt (1 s, 2 s, 4 s ... apart) until its
    # deadline: one attempt, backoffLimit untouched.
    assert attempts(history) == 1
    assert result.attempts is not None
    assert result.attempts.failed == 0
    assert result.usage is not None
    assert result.usage.requests >= 3, result.usage
    assert result.usage.resent_requests == result.usage.requests - 1
    assert time.monotonic() - started < 30
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
    streamed = ChatAgent(providers_file(tmp_path, base_url, KEY, stall_timeout_seconds=1))
    (tmp_path / "whole").mkdir()
    whole = ChatAgent(
        providers_file(tmp_path / "whole", base_url, KEY, stream=False, timeout_seconds=1)
    )
    assert (await streamed.run(request())).output  # through the relay it answers
    relay.blackhole()
    for agent, said in (
        (streamed, "sent nothing for 1s (stallTimeoutSeconds)"),
        (whole, "did not answer within timeoutSeconds=1"),
    ):
        started = time.monotonic()
        with pytest.raises(ApplicationError) as err:
            await agent.run(request())
        elapsed = time.monotonic() - started
        assert err.value.type == "ProviderUnavailable"
        # Called outside an attempt (no deadline known): not re-sent, but retryable.
        assert not err.value.non_retryable
        assert said in err.value.message
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
    assert attempts(history) == 1  # re-sent inside the attempt
    assert result.usage is not None
    assert (result.usage.requests, result.usage.resent_requests) == (2, 1)
    # The backoff alone would have re-sent it after about 1 s.
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


async def call_provider(provider: Provider, api_key: str | None, body: dict[str, Any]) -> Any:
    """One request as the chat agent sends it outside an attempt (nothing re-sent)."""
    return await complete(ProviderCall(provider, api_key, body), None)


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
        await complete(ProviderCall(bearer, GATEWAY_KEY, BODY), None)
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
    await complete(ProviderCall(direct, GATEWAY_KEY, BODY), None)
    # Then one through the proxy: its tunnel is the only one logged.
    await call_provider(
        azure(gateway.base_url, ca, ProxySettings(https=connect_proxy.url)), GATEWAY_KEY, BODY
    )
    assert connect_proxy.tunnels(at_least=1) == [f"localhost:{gateway.port}"]
    assert gateway.served == 2


@pytest.fixture
async def model_relay(openai_server: OpenAIServer) -> AsyncIterator[ModelRelay]:
    relay = ModelRelay(openai_server.base_url)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def test_a_completion_slower_than_the_old_60s_timeout_succeeds_with_one_request(
    temporal: TemporalDevServer, task_queue: str, model_relay: ModelRelay, tmp_path: Path
) -> None:
    """A throttled model (a chunk a second for over a minute: the old total
    timeout was 60 s) is streamed to its end; the stall timeout (5 s) never
    fires while tokens come, and nothing is sent twice."""
    tokens = 62
    model_relay.event_delay = 1.0
    agent = ChatAgent(providers_file(tmp_path, model_relay.base_url, KEY, stall_timeout_seconds=5))
    started = time.monotonic()
    result, history = await run_workflow(
        temporal,
        task_queue,
        agent,
        {"message": "go on", "parameters": {**request().parameters, "maxTokens": tokens}},
    )
    elapsed = time.monotonic() - started
    assert (result.phase, result.reason) == ("Succeeded", None), result
    assert elapsed > 60, elapsed
    assert model_relay.requests == 1
    assert result.usage is not None
    assert (result.usage.requests, result.usage.resent_requests) == (1, 0)
    assert result.usage.completion_tokens == tokens
    assert attempts(history) == 1


async def test_a_frozen_server_is_resent_once_after_the_stall_and_both_are_billed(
    temporal: TemporalDevServer,
    task_queue: str,
    openai_server: OpenAIServer,
    tmp_path: Path,
) -> None:
    """The real server SIGSTOPped: the request gets no byte for the stall
    timeout (2 s), is closed and sent again; the server, thawed, answers it."""
    agent = ChatAgent(
        providers_file(tmp_path, openai_server.base_url, KEY, stall_timeout_seconds=2)
    )
    openai_server.freeze()
    try:
        run = asyncio.ensure_future(
            run_workflow(
                temporal, task_queue, agent, {"message": "hi", "parameters": request().parameters}
            )
        )
        # Past the first request's stall (2 s), inside the re-sent one's
        # (sent about a second later, stalling 2 s after that).
        await asyncio.sleep(3.6)
    finally:
        openai_server.thaw()
    result, history = await asyncio.wait_for(run, 60)
    assert (result.phase, result.reason) == ("Succeeded", None), result
    assert result.usage is not None
    assert (result.usage.requests, result.usage.resent_requests) == (2, 1), result.usage
    assert result.usage.completion_tokens == PARAMS["maxTokens"]
    assert attempts(history) == 1  # re-sent inside the attempt
    assert result.attempts is not None
    assert (result.attempts.failed, result.attempts.disrupted) == (0, 0)


async def test_rate_limits_honour_retry_after_and_leave_the_backoff_limit_untouched(
    temporal: TemporalDevServer, task_queue: str, model_relay: ModelRelay, tmp_path: Path
) -> None:
    model_relay.rate_limited = 5
    agent = ChatAgent(providers_file(tmp_path, model_relay.base_url, KEY))
    started = time.monotonic()
    result, history = await run_workflow(
        temporal,
        task_queue,
        agent,
        {"message": "hi", "parameters": request().parameters, "backoff_limit": 0},
    )
    assert (result.phase, result.reason) == ("Succeeded", None), result
    assert model_relay.requests == 6
    # Five waits of Retry-After: 1 (the backoff's own would be 1, 2, 4, 8, 16 s).
    assert 5 <= time.monotonic() - started < 25
    assert attempts(history) == 1
    assert result.attempts is not None
    assert (result.attempts.count, result.attempts.failed) == (1, 0)
    assert result.usage is not None
    assert (result.usage.requests, result.usage.resent_requests) == (6, 5)
