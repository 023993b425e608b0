"""Two installs on one Temporal namespace never cross (issue #22): two operator
processes and their runners, each install named (AGENTEXEC_INSTALL) and its
task queues derived from that name, each runner with its own provider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client

from agentexec.runner.providers import PROVIDERS_FILE_ENV, Provider, dump_providers
from localenv.kube import ControlPlane
from localenv.openai_server import MODEL, OpenAIServer
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.e2e.test_agents import apply_agent
from tests.e2e.test_chat import KEY, openai_server  # noqa: F401 (the module-scoped fixture)
from tests.support.operator import OperatorProcess, RunnerProcess
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]
PER_INSTALL = 50
CHATS = 10  # of them chat executions, the others echo


def install_env(install: str) -> dict[str, str]:
    # No queue named: both derive from the install's name, as the chart does.
    return {
        "AGENTEXEC_INSTALL": install,
        "AGENTEXEC_TASK_QUEUE": "",
        "AGENTEXEC_RUNNER_TASK_QUEUE": "",
        "AGENTEXEC_RUNNER_TASK_QUEUES": "",
    }


async def runner_identities(address: str, workflow_ids: list[str]) -> dict[str, str]:
    """The identity of the worker that ran each workflow's agent, from its history."""
    client = await Client.connect(address)

    async def one(wid: str) -> tuple[str, str]:
        history = await client.get_workflow_handle(wid).fetch_history()
        started = [
            e.activity_task_started_event_attributes.identity
            for e in history.events
            if e.HasField("activity_task_started_event_attributes")
        ]
        return wid, started[0]  # run_agent comes first, report_status after

    return dict(await asyncio.gather(*(one(w) for w in workflow_ids)))


async def test_two_installs_on_one_temporal_namespace_each_run_on_their_own_runners(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    openai_server: OpenAIServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    team_b = f"{namespace[:40]}-b"
    control_plane.kubectl("create", "namespace", team_b)
    teams = {"a": namespace, "b": team_b}
    installs = {team: f"{ns}.aex" for team, ns in teams.items()}
    key_file = tmp_path / "apiKey"
    key_file.write_text(KEY)
    operators: dict[str, OperatorProcess] = {}
    runners: list[RunnerProcess] = []
    try:
        for team, ns in teams.items():
            env = install_env(installs[team])
            operators[team] = make_operator(
                AGENTEXEC_RUNNER_ENABLED="false",
                AGENTEXEC_WATCH_NAMESPACES=ns,
                AGENTEXEC_LEADER_ELECTION_NAMESPACE=ns,
                **env,
            )
            # Each install's runners know only its own provider: an execution
            # that reached the other install's runner would fail (no provider
            # named so), not succeed.
            providers = tmp_path / f"providers-{team}.json"
            providers.write_text(dump_providers({
                f"provider-{team}": Provider(f"provider-{team}", openai_server.base_url, key_file),
            }))  # fmt: skip
            runner = RunnerProcess(
                tmp_path, temporal.address, f"{installs[team]}-runner",
                env={**env, PROVIDERS_FILE_ENV: str(providers)}, name=f"runner-{team}",
            )  # fmt: skip
            runners.append(runner)
            runner.start()
            apply_agent(
                control_plane, ns, "assistant", type="chat", model=MODEL,
                provider=f"provider-{team}", parameters={"maxTokens": 4, "temperature": 0},
            )  # fmt: skip
        names = [f"x{n:02d}" for n in range(PER_INSTALL)]
        for ns in teams.values():
            items: list[dict[str, Any]] = [
                {
                    "apiVersion": "agentexec.io/v1alpha1",
                    "kind": "AgentExecution",
                    "metadata": {"name": name},
                    "spec": {"agent": "assistant" if n < CHATS else "echo", "message": name},
                }
                for n, name in enumerate(names)
            ]
            control_plane.kubectl(
                "create", "-n", ns, "-f", "-",
                stdin="\n---\n".join(json.dumps(i) for i in items),
            )  # fmt: skip
        done: dict[str, list[dict[str, Any]]] = {}
        for team, ns in teams.items():
            done[team] = await eventually(
                lambda ns=ns: aex.list_all(control_plane, ns),  # type: ignore[misc]
                lambda objs: (
                    len(objs) == PER_INSTALL
                    and all(aex.phase(o) in ("Succeeded", "Failed") for o in objs)
                ),
                timeout=240,
                interval=1,
                what=f"{PER_INSTALL} finished in {ns}",
            )
        for team, objs in done.items():
            failed = {
                o["metadata"]["name"]: aex.summary(o) for o in objs if aex.phase(o) != "Succeeded"
            }
            assert failed == {}, f"install {team}: {failed}"
            for obj in objs:
                if obj["spec"]["agent"] == "echo":
                    assert obj["status"]["output"] == obj["metadata"]["name"]
            # Every agent ran on this install's runner, every workflow on its queue.
            identities = await runner_identities(
                temporal.address, [o["status"]["workflow"]["id"] for o in objs]
            )
            strangers = {
                w: i for w, i in identities.items() if not i.startswith(f"{installs[team]}:runner:")
            }
            assert strangers == {}, f"install {team} ran agents elsewhere: {strangers}"
            assert {o["status"]["workflow"]["taskQueue"] for o in objs} == {
                f"{installs[team]}-executions"
            }
            metrics = operators[team].metrics()
            assert "agentexec_foreign_pollers{" in metrics
            assert all(
                line.endswith(" 0.0")
                for line in metrics.splitlines()
                if line.startswith("agentexec_foreign_pollers{")
            ), metrics
    finally:
        for runner in runners:
            runner.stop()
