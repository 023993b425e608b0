"""Token limits and budgets end to end (issue #22): the operator process, a
chat runner, llama.cpp's OpenAI-compatible server (model "tiny")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from localenv.kube import ControlPlane
from localenv.openai_server import MODEL, OpenAIServer
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.e2e.test_chat import (  # noqa: F401 (the module-scoped server fixture)
    KEY,
    MAX_TOKENS,
    apply_chat_agent,
    chat_runner,
    finished,
    openai_server,
    providers_file,
)
from tests.support.operator import OperatorProcess

MakeOperator = Callable[..., OperatorProcess]


async def test_an_execution_s_token_limit_stops_its_chat_agent_budget_exceeded(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    openai_server: OpenAIServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false")
    providers = providers_file(tmp_path / "providers", openai_server.base_url, KEY)
    runner = chat_runner(tmp_path, temporal, operator.runner_queue, providers)
    try:
        apply_chat_agent(control_plane, namespace)
        # One after the other: llama.cpp's server answers one request at a time.
        aex.create(control_plane, namespace, "capped", "hello?", agent="assistant",
                   limits={"maxTokens": 4})  # fmt: skip
        capped = await finished(control_plane, namespace, "capped")
        aex.create(control_plane, namespace, "roomy", "hello?", agent="assistant",
                   limits={"maxTokens": 100_000})  # fmt: skip
        roomy = await finished(control_plane, namespace, "roomy")
        metrics = runner.get("/metrics")[1]
    finally:
        runner.stop()
    assert aex.phase(capped) == "Failed"
    assert capped["status"]["error"]["reason"] == "BudgetExceeded"
    assert "spec.limits.maxTokens left 4 for this attempt" in capped["status"]["error"]["message"]
    usage = capped["status"]["usage"]
    assert usage["completionTokens"] == 4, usage  # cut at the limit (the Agent asks 8)
    assert usage["totalTokens"] >= 4, usage  # streamed: the server sends no prompt count
    assert aex.condition(capped, "Succeeded")["reason"] == "BudgetExceeded"
    assert aex.phase(roomy) == "Succeeded", aex.summary(roomy)
    assert roomy["status"]["usage"]["completionTokens"] == MAX_TOKENS
    assert (
        'agentexec_runner_agent_attempts_total{agent="chat",outcome="budget_exceeded"} 1.0'
        in metrics
    )
    # Tokens are counted where they are spent, a stopped agent's included.
    labels = (
        f'agent="assistant",execution_namespace="{namespace}",kind="completion",model="{MODEL}"'
    )
    completion = f'agentexec_tokens_total{{{labels},provider="local"}} {4 + MAX_TOKENS}.0'
    assert completion in metrics, [m for m in metrics.splitlines() if "tokens" in m]
    prompt = usage["promptTokens"] + roomy["status"]["usage"]["promptTokens"]
    prompts = [m for m in metrics.splitlines() if 'kind="prompt"' in m and "tokens_total{" in m]
    if prompt:  # a streamed answer reports no prompt count: then no series
        assert [m.rsplit(" ", 1)[1] for m in prompts] == [f"{float(prompt)}"], prompts
    else:
        assert prompts == []
