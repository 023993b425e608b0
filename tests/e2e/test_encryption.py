"""Payloads encrypted at rest, end to end (issue #22): the operator process
and a chat runner with the same keys, llama.cpp's OpenAI-compatible server,
and the chat execution's history read with the `temporal` CLI."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

from agentexec.runner.providers import PROVIDERS_FILE_ENV
from localenv.kube import ControlPlane
from localenv.openai_server import OpenAIServer
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.e2e.test_chat import (  # noqa: F401 (the module-scoped server fixture)
    KEY,
    apply_chat_agent,
    finished,
    openai_server,
    providers_file,
)
from tests.integration.test_codec import decoded_data
from tests.support.operator import OperatorProcess, RunnerProcess

MakeOperator = Callable[..., OperatorProcess]
PROMPT = "Name the capital of the kingdom of Zorbl-4471."


async def test_a_chat_execution_s_history_holds_neither_prompt_nor_answer(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    openai_server: OpenAIServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "k1").write_text(base64.b64encode(os.urandom(32)).decode())
    sealed = {"AGENTEXEC_PAYLOAD_KEYS_DIR": str(keys), "AGENTEXEC_PAYLOAD_KEY_ID": "k1"}
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false", **sealed)
    providers = providers_file(tmp_path / "providers", openai_server.base_url, KEY)
    runner = RunnerProcess(
        tmp_path, temporal.address, operator.runner_queue,
        env={PROVIDERS_FILE_ENV: str(providers), **sealed},
    )  # fmt: skip
    runner.start()
    try:
        apply_chat_agent(control_plane, namespace)
        aex.create(control_plane, namespace, "secret", PROMPT, agent="assistant")
        done = await finished(control_plane, namespace, "secret")
        assert aex.phase(done) == "Succeeded", aex.summary(done)
        answer = done["status"]["output"].strip()
        assert answer
    finally:
        runner.stop()
    shown = temporal.cli_run(
        "workflow", "show", "--workflow-id", done["status"]["workflow"]["id"], "--output", "json"
    )
    assert shown.returncode == 0, shown.stderr
    payload_bytes = decoded_data(shown.stdout)
    for secret in (PROMPT, "Zorbl-4471", "Answer briefly.", answer):
        assert secret not in shown.stdout
        assert secret.encode() not in payload_bytes
    # Every payload says it is encrypted (metadata values are base64 in the JSON).
    assert base64.b64encode(b"binary/encrypted").decode() in shown.stdout
