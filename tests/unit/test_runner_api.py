"""The public runner API's pure parts: which agents a runner serves."""

from __future__ import annotations

import dataclasses

import pytest

from agentexec.cli import main
from agentexec.runner import AgentRequest, AgentResult, build_agents, context
from agentexec.runner.echo import EchoAgent
from agentexec.runner.process import select_agents
from agentexec.settings import load_settings


async def shout(request: AgentRequest) -> str:
    return request.message.upper()


async def test_functions_and_agent_objects_are_agents() -> None:
    agents = build_agents({"shout": shout, "echo": EchoAgent()})
    assert sorted(agents) == ["echo", "shout"]
    request = AgentRequest(agent="shout", message="hi")
    assert await agents["shout"].run(request) == AgentResult(output="HI")
    assert sorted(build_agents([EchoAgent()])) == ["echo"]


def test_a_plain_function_is_refused_by_name() -> None:
    def blocking(request: AgentRequest) -> str:
        return request.message

    with pytest.raises(TypeError, match="'blocking': needs an async function"):
        build_agents({"blocking": blocking})  # type: ignore[dict-item]


def test_context_outside_an_agent_says_so() -> None:
    with pytest.raises(RuntimeError, match="only available inside an agent"):
        context()


def test_runner_agents_setting_selects_and_names_what_is_missing() -> None:
    agents = build_agents({"shout": shout, "echo": EchoAgent()})
    settings = load_settings({"AGENTEXEC_RUNNER_AGENTS": "echo"})
    assert list(select_agents(settings, agents)) == ["echo"]
    assert sorted(select_agents(dataclasses.replace(settings, runner_agents=()), agents)) == [
        "echo",
        "shout",
    ]
    with pytest.raises(ValueError, match="not installed: nope"):
        select_agents(load_settings({"AGENTEXEC_RUNNER_AGENTS": "echo,nope"}), agents)


def test_runner_check_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTEXEC_RUNNER_AGENTS", "echo")
    assert main(["runner", "--check-config"]) == 0
    assert "configuration ok: agents echo" in capsys.readouterr().out
    monkeypatch.setenv("AGENTEXEC_RUNNER_AGENTS", "missing")
    assert main(["runner", "--check-config"]) == 2
    assert "not installed: missing" in capsys.readouterr().err
