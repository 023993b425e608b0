"""spec.limits.maxTokens (issue #22): the chat agent against llama.cpp's real
server, in the real runner activity and workflow on a Temporal dev server."""

from __future__ import annotations

from pathlib import Path

from agentexec.runner.chat import ChatAgent
from agentexec.temporal.types import AgentSpec, ExecutionResult
from localenv.openai_server import MODEL, OpenAIServer
from localenv.temporal import TemporalDevServer
from tests.integration.test_chat_agent import (  # noqa: F401 (the module-scoped server fixture)
    KEY,
    PARAMS,
    attempts,
    openai_server,
    providers_file,
    run_workflow,
)

SPEC = AgentSpec(
    name="greeter", type="chat", model=MODEL, system_prompt="answer briefly", provider="local"
)


async def run_limited(
    temporal: TemporalDevServer, task_queue: str, server: OpenAIServer, tmp: Path, limit: int
) -> tuple[ExecutionResult, str]:
    agent = ChatAgent(providers_file(tmp, server.base_url, KEY))
    inp = {"message": "say hello", "parameters": PARAMS, "agent_spec": SPEC, "max_tokens": limit}
    return await run_workflow(temporal, task_queue, agent, inp)


async def test_a_chat_that_would_go_past_its_limit_fails_budget_exceeded_with_its_usage(
    temporal: TemporalDevServer,
    task_queue: str,
    openai_server: OpenAIServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    result, history = await run_limited(temporal, task_queue, openai_server, tmp_path, 5)
    assert (result.phase, result.reason) == ("Failed", "BudgetExceeded"), result
    usage = result.usage
    assert usage is not None, result
    # The answer was cut at what the limit left (5 of the Agent's 8): the
    # budget ended it, so the agent is stopped (not given a truncated
    # answer), and not retried. (Streamed: the server reports no prompt count.)
    assert usage.completion_tokens == 5, usage
    assert usage.total_tokens >= 5
    assert "spec.limits.maxTokens left 5 for this attempt" in (result.message or "")
    assert attempts(history) == 1


async def test_a_chat_within_its_limit_answers_as_asked(
    temporal: TemporalDevServer,
    task_queue: str,
    openai_server: OpenAIServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    result, _ = await run_limited(temporal, task_queue, openai_server, tmp_path, 10_000)
    assert (result.phase, result.reason) == ("Succeeded", None), result
    assert result.usage is not None
    assert result.usage.completion_tokens == PARAMS["maxTokens"]
