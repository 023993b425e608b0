"""The chat agent's pure parts: request building, providers, answers and failures.

Against a real OpenAI-compatible server, through Temporal:
tests/integration/test_chat_agent.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from agentexec.runner import AgentFailed
from agentexec.runner.answers import SseParser, Streamed, build_completion, build_result
from agentexec.runner.chat import ChatAgent, build_chat_call, choose_provider
from agentexec.runner.provider_call import Bill
from agentexec.runner.provider_errors import (
    ProviderFailure,
    provider_words,
    retry_after_seconds,
    scrub,
)
from agentexec.runner.providers import (
    Provider,
    ProviderConfigError,
    build_ssl_context,
    dump_providers,
    load_providers,
    parse_providers,
    proxy_for,
)
from agentexec.settings import ProxySettings
from agentexec.temporal.types import AgentRequest, AgentResult, AgentSpec, Usage

KEY = "sk-test-0123456789abcdef"
LOCAL = Provider("local", "http://127.0.0.1:1/v1")


def test_a_plain_execution_names_model_provider_and_prompt_in_parameters() -> None:
    request = AgentRequest(
        "chat",
        "hi",
        parameters={
            "model": "m",
            "provider": "local",
            "systemPrompt": "be brief",
            "temperature": 0,
            "maxTokens": 8,
            "seed": 1,
            "unrelated": True,
        },
    )
    call = build_chat_call(request)
    assert call.provider == "local"
    assert call.body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "temperature": 0,
        "max_tokens": 8,
        "seed": 1,
    }


def test_the_agent_snapshot_wins_over_parameters() -> None:
    spec = AgentSpec(name="a", type="chat", model="snap", system_prompt="sp", provider="p1")
    request = AgentRequest(
        "chat", "hi", parameters={"model": "param", "provider": "p2"}, agent_spec=spec
    )
    call = build_chat_call(request)
    assert (call.provider, call.body["model"]) == ("p1", "snap")
    assert call.body["messages"][0] == {"role": "system", "content": "sp"}


def test_without_a_model_the_agent_fails_saying_where_to_set_it() -> None:
    with pytest.raises(AgentFailed, match=r"parameters\.model"):
        build_chat_call(AgentRequest("chat", "hi"))


def test_no_system_prompt_sends_the_message_alone() -> None:
    call = build_chat_call(AgentRequest("chat", "hi", parameters={"model": "m"}))
    assert call.body["messages"] == [{"role": "user", "content": "hi"}]


def test_a_provider_is_chosen_by_name_or_is_the_only_one() -> None:
    other = Provider("other", "http://x")
    assert choose_provider({"local": LOCAL}, None) is LOCAL
    assert choose_provider({"local": LOCAL, "other": other}, "other") is other
    with pytest.raises(AgentFailed, match=r"configured: local, other"):
        choose_provider({"local": LOCAL, "other": other}, None)
    with pytest.raises(AgentFailed, match="no provider named 'nope'"):
        choose_provider({"local": LOCAL}, "nope")


def test_the_providers_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(
        "providers:\n"
        "  local:\n"
        "    baseURL: http://127.0.0.1:8080/v1/\n"
        "    apiKeyFile: /keys/local\n"
        "    timeoutSeconds: 5\n"
        "    headers: {X-Team: agents}\n"
        "    stream: false\n"
        "  ollama:\n"
        "    baseURL: http://ollama:11434/v1\n"
        "    stallTimeoutSeconds: 300\n"
    )
    providers = load_providers(path)
    assert providers["local"] == Provider(
        "local",
        "http://127.0.0.1:8080/v1",
        Path("/keys/local"),
        5.0,
        {"X-Team": "agents"},
        stream=False,
    )
    ollama = providers["ollama"]
    assert ollama.api_key_file is None
    # Streamed by default, cut only by a stall; unstreamed, the OpenAI SDK's 10 minutes.
    assert (ollama.stream, ollama.stall_timeout_seconds, ollama.timeout_seconds) == (
        True,
        300.0,
        600.0,
    )


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        ({}, "under 'providers'"),
        ({"providers": {"p": {"baseURL": "ftp://x"}}}, "baseURL"),
        ({"providers": {"p": {"baseURL": "http://x", "timeoutSeconds": 0}}}, "timeoutSeconds"),
        ({"providers": {"p": {"baseURL": "http://x", "apiKey": KEY}}}, "unknown fields"),
        ({"providers": {"p": {"baseURL": "http://x", "headers": {"a": 1}}}}, "headers"),
        ({"providers": {"p": {"baseURL": "http://x", "apiKeyHeader": "api key"}}}, "apiKeyHeader"),
        (
            {"providers": {"p": {"baseURL": "http://x", "apiKeyHeader": "api-key",
                                 "headers": {"Api-Key": "x"}}}},
            "headers must not set apiKeyHeader",
        ),
        ({"providers": {"p": {"baseURL": "http://x", "caFile": "/ca.crt"}}}, "https:// baseURL"),
        ({"providers": {"p": {"baseURL": "https://x", "caFile": 3}}}, "caFile must be a path"),
        ({"providers": {"p": {"baseURL": "http://x", "stream": "yes"}}}, "stream must be"),
        ({"providers": {"p": {"baseURL": "http://x", "stallTimeoutSeconds": -1}}}, "stallTimeout"),
    ],
    ids=[
        "no-providers", "bad-url", "bad-timeout", "inline-key", "bad-headers", "bad-key-header",
        "key-header-in-headers", "ca-for-http", "bad-ca", "bad-stream", "bad-stall",
    ],
)  # fmt: skip
def test_a_bad_providers_file_says_what_is_wrong(data: Any, shown: str) -> None:
    with pytest.raises(ProviderConfigError, match=shown) as err:
        parse_providers(data)
    assert KEY not in str(err.value)


def test_the_key_is_read_at_each_call_so_rotation_applies(tmp_path: Path) -> None:
    key_file = tmp_path / "apiKey"
    provider = Provider("local", "http://x", key_file)
    key_file.write_text(KEY + "\n")
    assert provider.read_api_key() == KEY
    key_file.write_text("rotated")
    assert provider.read_api_key() == "rotated"
    key_file.unlink()
    with pytest.raises(ProviderConfigError, match="is its Secret mounted"):
        provider.read_api_key()


async def test_an_unknown_provider_is_not_retried_and_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text("providers: {local: {baseURL: http://127.0.0.1:1/v1}}\n")
    request = AgentRequest("chat", "hi", parameters={"model": "m", "provider": "openai"})
    with pytest.raises(AgentFailed, match="no provider named 'openai' on this runner") as err:
        await ChatAgent(path).run(request)
    assert "(configured: local)" in str(err.value)


async def test_an_unreadable_key_file_at_call_time_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "providers.yaml"
    key = tmp_path / "absent"
    path.write_text(
        f"providers: {{local: {{baseURL: http://127.0.0.1:1/v1, apiKeyFile: {key}}}}}\n"
    )
    with pytest.raises(ApplicationError) as err:
        await ChatAgent(path).run(AgentRequest("chat", "hi", parameters={"model": "m"}))
    assert err.value.type == "ProviderKeyUnreadable"
    assert not err.value.non_retryable
    assert str(key) in err.value.message


async def test_a_runner_without_providers_fails_the_agent_clearly() -> None:
    agent = ChatAgent(providers_file=Path("/nonexistent/providers.yaml"))
    with pytest.raises(AgentFailed, match="cannot read the providers file"):
        await agent.run(AgentRequest("chat", "hi", parameters={"model": "m"}))


def completion(content: Any, usage: Any) -> bytes:
    body: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


def test_a_completion_gives_the_answer_and_the_usage() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert build_result(LOCAL, 200, completion("hello", usage)) == AgentResult(
        "hello", Usage(5, 3, 8)
    )
    assert build_result(LOCAL, 200, completion(None, None)) == AgentResult("", None)


@pytest.mark.parametrize(
    ("status", "kind", "resend"),
    [
        (500, "ProviderUnavailable", True),
        (502, "ProviderUnavailable", True),
        (503, "ProviderUnavailable", True),
        (429, "RateLimited", True),
        (408, "ProviderUnavailable", True),
        (400, "ProviderRejected", False),
        (401, "ProviderRejected", False),
        (403, "ProviderRejected", False),
        (404, "ProviderRejected", False),
        (422, "ProviderRejected", False),
    ],
)
def test_http_errors_map_to_reasons_and_whether_a_resend_may_help(
    status: int, kind: str, resend: bool
) -> None:
    body = json.dumps({"error": {"message": "said the provider", "type": "x"}}).encode()
    with pytest.raises(ProviderFailure) as err:
        build_result(LOCAL, status, body)
    assert err.value.kind == kind
    assert err.value.resend is resend
    assert err.value.message == f"provider 'local' answered HTTP {status}: said the provider"


def err(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, **({"code": code} if code else {})}}


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        # OpenAI's code, and the words of servers that send none.
        (400, err("too long", "context_length_exceeded"), "ContextTooLong"),
        (400, err("This model's maximum context length is 8192 tokens"), "ContextTooLong"),
        (400, err("the request exceeds the available context size"), "ContextTooLong"),
        (413, err("prompt is too long: 210000 tokens > 200000"), "ContextTooLong"),
        (400, err("flagged", "content_filter"), "ContentFiltered"),
        (400, err("no", "content_policy_violation"), "ContentFiltered"),
        (400, err("bad temperature"), "ProviderRejected"),
        (401, err("context length is fine, your key is not"), "ProviderRejected"),
    ],
)  # fmt: skip
def test_what_the_provider_says_is_wrong_with_the_prompt_is_its_own_reason(
    status: int, body: dict[str, Any], kind: str
) -> None:
    with pytest.raises(ProviderFailure) as failure:
        build_result(LOCAL, status, json.dumps(body).encode())
    assert (failure.value.kind, failure.value.resend) == (kind, False)


def test_a_filtered_answer_is_content_filtered() -> None:
    body = {"choices": [{"message": {"content": ""}, "finish_reason": "content_filter"}]}
    with pytest.raises(ProviderFailure) as err:
        build_result(LOCAL, 200, json.dumps(body).encode())
    assert (err.value.kind, err.value.resend) == ("ContentFiltered", False)


@pytest.mark.parametrize(
    ("header", "delay"),
    [
        (None, None),  # the backoff applies
        ("7", 7.0),
        (" 0 ", 0.0),
        ("3600", 3600.0),  # honoured; the attempt's deadline decides
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # the date form is not read
        ("-5", None),
        ("1.5", None),
        ("soon", None),
    ],
)
def test_retry_after_is_read_in_seconds(header: str | None, delay: float | None) -> None:
    assert retry_after_seconds(header) == delay


@pytest.mark.parametrize(("status", "asked"), [(429, 20.0), (503, 20.0), (400, None)])
def test_a_retryable_answer_carries_its_retry_after(status: int, asked: float | None) -> None:
    with pytest.raises(ProviderFailure) as err:
        build_result(LOCAL, status, b"slow down", retry_after="20")
    assert err.value.retry_after == asked


def sse(*events: Any) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n"
        for e in events
    )


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"delta": {"content": text}, "finish_reason": finish}]}


def test_a_stream_is_parsed_whatever_its_chunking() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    raw = b": keep-alive\n\n" + sse(
        delta("hel"), delta("lo", "stop"), {"choices": [], "usage": usage}, b"[DONE]"
    )
    for size in (1, 7, len(raw)):
        parser, streamed = SseParser(), Streamed(LOCAL)
        for i in range(0, len(raw), size):
            for data in parser.feed(raw[i : i + size]):
                streamed.event(data)
        assert (streamed.content, streamed.deltas, streamed.done) == ("hello", 2, True), size
        assert streamed.usage == Usage(4, 2, 6)


def tool_delta(index: int, **piece: Any) -> dict[str, Any]:
    return {"choices": [{"delta": {"tool_calls": [{"index": index, **piece}]}}]}


def test_streamed_tool_calls_are_put_together_from_their_pieces() -> None:
    """OpenAI's shape (and llama.cpp's, vLLM's): the id and name come once,
    the arguments in parts; several calls by index, interleaved."""
    events = [
        tool_delta(0, id="call_a", type="function", function={"name": "add", "arguments": ""}),
        tool_delta(0, function={"arguments": '{"a": '}),
        tool_delta(1, id="call_b", function={"name": "lookup"}),
        tool_delta(0, function={"arguments": '2, "b": 3}'}),
        tool_delta(1, function={"name": "lookup", "arguments": '{"q": "x"}'}),  # name repeated
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}},
    ]
    streamed = Streamed(LOCAL)
    for event in events:
        streamed.event(json.dumps(event))
    answer = streamed.completion()
    assert answer.content == ""
    assert [(c["id"], c["type"], c["function"]) for c in answer.tool_calls] == [
        ("call_a", "function", {"name": "add", "arguments": '{"a": 2, "b": 3}'}),
        ("call_b", "function", {"name": "lookup", "arguments": '{"q": "x"}'}),
    ]
    assert (answer.finish_reason, answer.usage) == ("tool_calls", Usage(9, 4, 13))
    assert streamed.deltas == 3  # argument pieces count toward a cut request's bill


def test_a_whole_answers_tool_calls_are_kept_with_their_arguments_as_text() -> None:
    body = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "function": {"name": "add", "arguments": {"a": 1}}},
                        {"function": {"name": "noop"}},
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    answer = build_completion(LOCAL, 200, json.dumps(body).encode())
    assert answer.content == ""
    assert [c["function"] for c in answer.tool_calls] == [
        {"name": "add", "arguments": '{"a": 1}'},
        {"name": "noop", "arguments": "{}"},
    ]
    assert [c["id"] for c in answer.tool_calls] == ["c1", "call-1"]


def test_a_stream_without_the_last_blank_line_still_ends() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"a": 1}\ndata: {"b": 2}') == []
    assert parser.close() == ['{"a": 1}\n{"b": 2}']


def test_an_error_mid_stream_may_be_resent_and_a_filter_may_not() -> None:
    streamed = Streamed(LOCAL)
    with pytest.raises(ProviderFailure) as err:
        streamed.event(json.dumps({"error": {"message": "overloaded"}}))
    assert (err.value.kind, err.value.resend) == ("ProviderUnavailable", True)
    assert "overloaded" in err.value.message
    with pytest.raises(ProviderFailure) as err:
        streamed.event(json.dumps(delta("", "content_filter")))
    assert (err.value.kind, err.value.resend) == ("ContentFiltered", False)


def test_a_cut_request_is_billed_by_its_streamed_tokens_and_its_prompt() -> None:
    bill = Bill(ctx=None)
    bill.sent(resent=False)
    cut = Streamed(LOCAL)
    for text in ("a", "b", "c"):
        cut.event(json.dumps(delta(text)))
    bill.cut(cut)  # stalled after three tokens
    bill.sent(resent=True)
    bill.answered(Usage(10, 5, 15), None)
    # The same prompt twice, three tokens that were cut off, five answered.
    assert bill.total == Usage(20, 8, 28, requests=2, resent_requests=1)


@pytest.mark.parametrize(
    "body", [b"<html>not an API</html>", b"{}", b'{"choices": []}', b'{"choices": [{}]}']
)
def test_a_2xx_that_is_no_completion_is_not_resent(body: bytes) -> None:
    with pytest.raises(ProviderFailure) as err:
        build_result(LOCAL, 200, body)
    assert (err.value.kind, err.value.resend) == ("ProviderInvalidResponse", False)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"error": {"message": "Incorrect API key"}}', "Incorrect API key"),
        (b'{"error": "model not found"}', "model not found"),
        (b'{"detail": "Invalid API key"}', "Invalid API key"),
        (b'{"message": "slow down"}', "slow down"),
        (b"Bad Gateway", "Bad Gateway"),
        (b'{"unexpected": 1}', '{"unexpected": 1}'),
    ],
    ids=["openai", "error-string", "fastapi-detail", "message", "plain-text", "other-json"],
)
def test_the_providers_own_words_are_kept(body: bytes, words: str) -> None:
    assert provider_words(body) == words


@pytest.mark.parametrize(
    "text",
    [
        f"invalid key {KEY}",
        f"header was Authorization: Bearer {KEY}",
        "Incorrect API key provided: sk-test-****cdef. You can find your API key at ...",
        'got {"api_key": "sk-other-secret"}',
        "407, message='Proxy Authentication Required', url='http://me:sk-other-pass@proxy:3128'",
    ],
    ids=["verbatim", "bearer", "openai-masked", "json-field", "proxy-login"],
)
def test_secrets_are_scrubbed_from_messages(text: str) -> None:
    clean = scrub(text, [KEY])
    assert KEY not in clean
    assert "sk-test" not in clean
    assert "sk-other" not in clean
    assert "[REDACTED]" in clean


def test_a_key_echoed_in_an_error_body_never_reaches_the_failure() -> None:
    body = json.dumps({"error": {"message": f"key {KEY} is revoked"}}).encode()
    with pytest.raises(ProviderFailure) as err:
        build_result(LOCAL, 401, body)
    assert (
        scrub(err.value.message, [KEY])
        == "provider 'local' answered HTTP 401: key [REDACTED] is revoked"
    )


def test_the_key_goes_in_a_bearer_authorization_or_as_is_in_its_header() -> None:
    assert LOCAL.auth_headers(KEY) == {"Authorization": f"Bearer {KEY}"}
    assert LOCAL.auth_headers(None) == {}
    azure = parse_providers(
        {"providers": {"azure": {"baseURL": "https://x/v1", "apiKeyHeader": "api-key"}}}
    )["azure"]
    assert azure.auth_headers(KEY) == {"api-key": KEY}


@pytest.mark.parametrize(
    ("url", "no_proxy", "expected"),
    [
        ("https://api.openai.com/v1", "", "http://proxy:3128"),
        ("http://vllm.models.svc:8000/v1", "", "http://plain-proxy:3128"),
        ("https://api.openai.com/v1", ".svc,localhost", "http://proxy:3128"),
        ("http://vllm.models.svc:8000/v1", ".svc,localhost", None),
        ("https://localhost:8443/v1", ".svc,localhost", None),
        ("https://api.openai.com/v1", "*", None),
        ("https://api.openai.com/v1", "openai.com", None),
    ],
)
def test_the_proxy_is_chosen_per_provider_url(
    url: str, no_proxy: str, expected: str | None
) -> None:
    proxies = ProxySettings(
        https="http://proxy:3128", http="http://plain-proxy:3128", no_proxy=no_proxy
    )
    assert proxy_for(url, proxies) == expected
    assert proxy_for(url, None) is None
    assert proxy_for(url, ProxySettings()) is None


def test_providers_carry_their_proxy_and_ca_and_write_back_what_they_read(tmp_path: Path) -> None:
    data = {"providers": {"azure": {
        "baseURL": "https://example.openai.azure.com/openai", "apiKeyHeader": "api-key",
        "caFile": "/etc/agentexec/ca/ca.crt", "apiKeyFile": "/keys/azure", "timeoutSeconds": 30.0,
        "stream": False, "stallTimeoutSeconds": 45.0,
    }}}  # fmt: skip
    [azure] = parse_providers(data, proxies=ProxySettings(https="http://proxy:3128")).values()
    assert (azure.proxy, azure.ca_file) == ("http://proxy:3128", Path("/etc/agentexec/ca/ca.crt"))
    assert json.loads(dump_providers({"azure": azure})) == data


def test_a_ca_file_that_cannot_be_used_names_the_provider_and_the_file(tmp_path: Path) -> None:
    provider = Provider("corp", "https://llm.corp/v1", ca_file=tmp_path / "missing.crt")
    with pytest.raises(ProviderConfigError, match=r"provider .corp.: caFile .*missing.crt"):
        build_ssl_context(provider)
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(ProviderConfigError, match=r"caFile .*bad.crt.* cannot be used"):
        build_ssl_context(Provider("corp", "https://llm.corp/v1", ca_file=tmp_path / "bad.crt"))
    assert build_ssl_context(LOCAL) is True  # the system roots


def test_credential_problems_name_missing_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    provider = Provider(
        "p", "https://x/v1", api_key_file=tmp_path / "empty", ca_file=tmp_path / "nope"
    )
    assert provider.credential_problems() == [
        f"provider 'p': apiKeyFile '{tmp_path}/empty' is empty",
        f"provider 'p': caFile '{tmp_path}/nope' cannot be read (No such file or directory); "
        "is it mounted?",
    ]
