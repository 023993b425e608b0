"""The agent loop's pure pieces: the loop spec from an Agent, which
AgentApprovals are relayed, what a loop report writes, the runner's MCP
servers file, and a step's model request."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentexec.approvals import plan_approvals, plan_loop_status
from agentexec.runner import AgentFailed
from agentexec.runner.steps import build_model_body
from agentexec.runner.tools import McpConfigError, McpServers, parse_servers
from agentexec.settings import ProxySettings
from agentexec.temporal.steps import (
    ApprovalPolicy,
    ModelCallRequest,
    Tool,
    ToolServer,
    build_loop_spec,
)
from agentexec.temporal.types import AgentSpec, ExecutionRef

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_loop_spec_resolves_services_and_defaults() -> None:
    spec = build_loop_spec(
        {
            "tools": [
                {"name": "a", "url": "http://x/mcp", "requireApproval": ["rm"], "onError": "Fail"},
                {"name": "b", "service": {"name": "tools", "port": 8080}},
                {"name": "c", "configuredServer": "github"},
            ],
            "approval": {"onTimeout": "Bogus", "afterSteps": 3},
        },
        "team",
        max_tokens=500,
        tool_choice="add",
    )
    assert spec.tools == [
        ToolServer("a", "http://x/mcp", require_approval=["rm"], on_error="Fail"),
        ToolServer("b", "http://tools.team.svc:8080/mcp"),
        ToolServer("c", "", configured="github"),  # the runner knows its URL
    ]
    assert spec.approval == ApprovalPolicy(after_steps=3, on_timeout="Reject")
    assert (spec.max_steps, spec.max_tokens, spec.tool_choice) == (20, 500, "add")


def approval(name: str, call: str, applied: bool = False) -> dict[str, object]:
    status = {"conditions": [{"type": "Applied", "status": "True"}]} if applied else {}
    return {
        "metadata": {"name": name},
        "spec": {"execution": "ask", "id": call, "decision": "Approve", "approver": "alice"},
        "status": status,
    }


def test_only_the_call_waited_for_is_relayed() -> None:
    execution = {
        "status": {
            "pendingApproval": {"id": "2-0", "tool": "add"},
            "lastApproval": {"id": "1-0", "approval": "first", "decision": "Approved"},
        }
    }
    relays = plan_approvals(
        execution,
        [
            approval("now", "2-0"),
            approval("late", "1-0"),
            approval("ahead", "3-0"),
            approval("done", "2-0", applied=True),
        ],
        terminal=False,
    )
    assert [(r.name, r.signal is not None, r.applied, r.reason) for r in relays] == [
        ("now", True, True, "Relayed"),
        ("late", False, False, "AlreadyDecided"),
    ]
    assert relays[0].signal is not None
    assert relays[0].signal.approver == "alice"
    ended = plan_approvals({"status": {}}, [approval("ahead", "3-0")], terminal=True)
    assert [(r.name, r.reason) for r in ended] == [("ahead", "NotPending")]


def test_a_loop_report_says_what_waits_and_who_decided() -> None:
    body = {"metadata": {"name": "ask"}, "status": {}}
    pending = {"id": "1-0", "step": 1, "tool": "add", "timeoutSeconds": 60, "onTimeout": "Reject"}
    patch, events = plan_loop_status(body, {"progress": {}, "pendingApproval": pending}, NOW, [])
    assert patch["conditions"][0]["type"] == "AwaitingApproval"
    assert patch["conditions"][0]["status"] == "True"
    assert [e.reason for e in events] == ["ApprovalRequested"]
    waited = {"metadata": {"name": "ask"}, "status": {**patch}}
    last = {"id": "1-0", "decision": "Approved", "approver": "alice"}
    patch, events = plan_loop_status(
        waited, {"pendingApproval": None, "lastApproval": last}, NOW, patch["conditions"]
    )
    assert patch["conditions"][0]["status"] == "False"
    assert patch["conditions"][0]["reason"] == "Approved"
    assert [(e.reason, "alice" in e.message) for e in events] == [("Approved", True)]
    # The same report again is no news.
    again = {"metadata": {"name": "ask"}, "status": {**patch}}
    assert plan_loop_status(again, {"lastApproval": last}, NOW, patch["conditions"])[1] == ()


def test_the_mcp_servers_file_says_what_is_wrong_with_it() -> None:
    good = {"servers": {"gh": {"url": "https://x/mcp", "headerFiles": {"Authorization": "/a"}}}}
    assert parse_servers(good)["gh"].header_files == {"Authorization": Path("/a")}
    for data, problem in [
        ({}, "expected a mapping under 'servers'"),
        ({"servers": {"gh": {"url": "ftp://x"}}}, "url must be an http(s) URL"),
        ({"servers": {"gh": {"url": "http://x", "header": {}}}}, "unknown fields ['header']"),
        ({"servers": {"gh": {"url": "http://x", "headers": {"A": 1}}}}, "headers must map"),
        (
            {
                "servers": {
                    "gh": {"url": "http://x", "headers": {"a": "1"}, "headerFiles": {"A": "/"}}
                }
            },
            "['a'] set in both headers and headerFiles",
        ),
    ]:
        with pytest.raises(McpConfigError) as err:
            parse_servers(data)
        assert problem in str(err.value)


def test_a_configured_server_is_resolved_on_the_runner_with_its_headers(tmp_path: Path) -> None:
    token = tmp_path / "authorization"
    token.write_text("Bearer t0ken\n")
    servers_file = tmp_path / "servers.yaml"
    servers_file.write_text(
        "servers:\n  gh:\n    url: https://mcp.example/mcp\n    headers: {X-Team: a}\n"
        f"    headerFiles: {{Authorization: {token}}}\n"
    )
    servers = McpServers(servers_file, ProxySettings(https="http://proxy:3128"))
    endpoint = servers.resolve(ToolServer("tools", "", configured="gh"))
    assert endpoint.url == endpoint.server.url == "https://mcp.example/mcp"
    assert endpoint.headers == {"X-Team": "a", "Authorization": "Bearer t0ken"}
    assert endpoint.proxy == "http://proxy:3128"
    # A server the Agent addresses itself gets no configured headers.
    plain = servers.resolve(ToolServer("own", "http://tools.team.svc:8080/mcp"))
    assert (plain.headers, plain.proxy) == ({}, None)
    with pytest.raises(AgentFailed, match=r"no MCP server named 'other'.*configured: gh"):
        servers.resolve(ToolServer("tools", "", configured="other"))
    token.unlink()
    with pytest.raises(AgentFailed, match="cannot read headerFiles\\['Authorization'\\]"):
        servers.resolve(ToolServer("tools", "", configured="gh"))
    assert servers.check() == [
        f"MCP server 'gh': cannot read headerFiles['Authorization'] {str(token)!r} "
        "(No such file or directory); is its Secret mounted?"
    ]
    with pytest.raises(AgentFailed, match="has no MCP servers file"):
        McpServers().resolve(ToolServer("tools", "", configured="gh"))


def test_a_model_step_sends_the_conversation_tools_and_what_the_budget_leaves() -> None:
    spec = AgentSpec(
        name="a", type="assistant", model="m", provider="p", system_prompt="be brief",
        parameters={"maxTokens": 100, "temperature": 0},
    )  # fmt: skip
    tool = Tool(server="s", name="add", description="adds", parameters={"type": "object"})
    provider, body = build_model_body(
        ModelCallRequest(
            execution=ExecutionRef("ns", "n", "u"),
            step=2,
            agent_spec=spec,
            messages=[{"role": "user", "content": "hi"}],
            tools=[tool],
            tool_choice="add",
            max_tokens=40,
        )
    )
    assert provider == "p"
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert body["tools"][0]["function"]["name"] == "add"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert (body["max_tokens"], body["temperature"]) == (40, 0)
