"""The public runner API's pure parts: which agents a runner serves."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from agentexec.cli import main
from agentexec.runner import (
    AgentLoadError,
    AgentRequest,
    AgentResult,
    build_agents,
    context,
    load_agents,
)
from agentexec.runner.activity import _heartbeat
from agentexec.runner.echo import EchoAgent
from agentexec.runner.process import is_loopback, select_agents
from agentexec.settings import load_settings
from localenv.procs import free_port
from tests.support.waiting import eventually


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


def _entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = [
        EntryPoint("echo", "agentexec.runner.echo:EchoAgent", "agentexec.agents"),
        EntryPoint("broken", "agentexec_no_such_module:Agent", "agentexec.agents"),
    ]
    monkeypatch.setattr(
        "agentexec.runner.api.entry_points",
        lambda group: [e for e in installed if e.group == group],
    )


def test_a_broken_entry_point_stops_the_runner_unless_it_is_not_served(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _entry_points(monkeypatch)
    assert list(load_agents()) == ["echo"]  # lenient: the in-process runner logs it
    with pytest.raises(AgentLoadError, match="broken = agentexec_no_such_module:Agent"):
        load_agents(strict=True)
    assert list(load_agents(only=["echo"], strict=True)) == ["echo"]

    monkeypatch.delenv("AGENTEXEC_RUNNER_AGENTS", raising=False)
    assert main(["runner", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "broken = agentexec_no_such_module:Agent could not be loaded" in err
    monkeypatch.setenv("AGENTEXEC_RUNNER_AGENTS", "echo")
    assert main(["runner", "--check-config"]) == 0


def test_runner_check_config_checks_the_providers_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    providers = tmp_path / "providers.yaml"
    monkeypatch.setenv("AGENTEXEC_PROVIDERS_FILE", str(providers))
    monkeypatch.setenv("AGENTEXEC_RUNNER_AGENTS", "chat")
    # A missing key file: a runner starting with it only warns (keys are read
    # at each call), but --check-config names it and fails (issue #21).
    providers.write_text(
        "providers:\n  p:\n    baseURL: http://x/v1\n    apiKeyFile: /nonexistent/key\n"
    )
    assert main(["runner", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert "agent 'chat': provider 'p': apiKeyFile '/nonexistent/key' cannot be read" in err
    key = tmp_path / "key"
    key.write_text("sk-1")
    providers.write_text(f"providers:\n  p:\n    baseURL: http://x/v1\n    apiKeyFile: {key}\n")
    assert main(["runner", "--check-config"]) == 0
    assert capsys.readouterr().out.endswith("configuration ok: agents chat\n")
    providers.write_text(
        "providers:\n  p:\n    baseURL: http://x/v1\n    headers: {X-Key: sk-secret\n"
    )
    assert main(["runner", "--check-config"]) == 2
    err = capsys.readouterr().err
    assert f"the providers file {str(providers)!r} is not YAML at line" in err
    assert "sk-secret" not in err
    providers.write_text("providers: {p: {baseURL: ftp://x}}\n")
    assert main(["runner", "--check-config"]) == 2
    assert "provider 'p': baseURL must be an http(s) URL" in capsys.readouterr().err
    providers.unlink()
    assert main(["runner", "--check-config"]) == 2
    assert f"cannot read the providers file {str(providers)!r}" in capsys.readouterr().err


async def test_an_attempts_first_heartbeat_waits_an_interval() -> None:
    """A short attempt (an agent loop's step) sends Temporal no heartbeat at
    all; a long one beats every interval (runner/activity.py)."""
    beats: list[float] = []

    class Ctx:
        heartbeat_every = 0.2

        def heartbeat(self) -> None:
            beats.append(time.monotonic())

    started = time.monotonic()
    beating = asyncio.create_task(_heartbeat(Ctx()))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert beats == []
    await eventually(lambda: beats, lambda b: len(b) >= 2, timeout=5, interval=0.05, what="beats")
    beating.cancel()
    assert beats[0] - started >= 0.2


@pytest.mark.parametrize(
    ("peer", "own"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.7", False),
        ("::ffff:10.0.0.7", False),
        ("fd00::2", False),
        (None, False),
        ("", False),
    ],
)
def test_drain_is_served_to_the_pod_itself_only(peer: str | None, own: bool) -> None:
    assert is_loopback(peer) is own


def test_the_drain_hook_says_when_no_runner_answers(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTEXEC_HTTP_PORT", str(free_port()))
    assert main(["runner", "--drain"]) == 1
    assert "runner --drain: no drain from port" in capsys.readouterr().err
