"""Agent resources in decide(): resolution, the snapshot, the task-queue policy. Table-driven."""

# ruff: noqa: E501  (one case a line reads best as a table)

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agentexec import conditions as c
from agentexec import planner
from agentexec.agents import AgentCache, AgentPolicy, build_agent_spec, slim_agent
from agentexec.decisions import AddFinalizer, Config, Observed, Start, build_input
from agentexec.settings import SettingsError, load_settings
from agentexec.temporal.types import AgentSpec, Answer, Outcome
from tests.unit.test_decide import DOWN, T0, UP, WF, kind, obj, step

STRICT = AgentPolicy(
    builtin_agents=frozenset({"echo"}), execution_task_queues=frozenset(), runner_task_queue="rq"
)


def agent(name: str = "helper", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": "ag1", "generation": 3},
        "spec": {
            "type": "chat",
            "model": "m1",
            "provider": "local",
            "systemPrompt": "be brief",
            "parameters": {"temperature": 0.1, "maxTokens": 50},
            **spec,
        },
    }


def execution(name: str = "helper", queued: Any = None, **spec: Any) -> dict[str, Any]:
    body = obj(queued=queued)
    body["spec"] = {"agent": name, "message": "hi", **spec}
    return body


def observed(body: dict[str, Any], **kw: Any) -> Observed:
    return Observed(
        body=body,
        conn=kw.pop("conn", UP),
        now=kw.pop("now", T0),
        config=Config(queue_ttl=60, policy=kw.pop("policy", STRICT)),
        **kw,
    )


def started_with(o: Observed) -> AgentSpec | None:
    d, _ = step(o)
    assert isinstance(d.request, Start), d
    return d.request.input.agent_spec


SNAPSHOT = AgentSpec(
    name="helper",
    type="chat",
    model="m1",
    system_prompt="be brief",
    provider="local",
    parameters={"temperature": 0.9, "maxTokens": 50},  # the execution's override wins
    uid="ag1",
    generation=3,
)
LONG_AGO = T0 - timedelta(seconds=600)  # TTL 60 s


@pytest.mark.parametrize(
    ("case", "o", "asks", "phase", "reason", "outcome"),
    [
        ("agent present: START with the snapshot", observed(execution(parameters={"temperature": 0.9}), agent=agent()), Start, None, None, ""),
        ("agent missing: wait, saying which", observed(execution()), None, "Pending", "AgentNotFound", "waiting-for-agent"),
        ("agent missing, Temporal down too: the Agent is said first", observed(execution(), conn=DOWN), None, "Pending", "AgentNotFound", "waiting-for-agent"),
        ("agent missing past the TTL: Failed AgentNotFound", observed(execution(queued=LONG_AGO)), None, "Failed", "AgentNotFound", "agent-not-found"),
        ("agent missing past the TTL, Temporal up: still fails", observed(execution(queued=LONG_AGO), conn=UP), None, "Failed", "AgentNotFound", "agent-not-found"),
        ("built-in name without an Agent: START, no snapshot", observed(execution("echo")), Start, None, None, ""),
        ("built-ins unknown (runner disabled): START as is", observed(execution("anything"), policy=AgentPolicy(builtin_agents=None, execution_task_queues=frozenset())), Start, None, None, ""),
        ("disallowed taskQueue: Failed before any workflow", observed(execution("echo", taskQueue="elsewhere")), None, "Failed", "TaskQueueNotAllowed", "task-queue-not-allowed"),
        ("disallowed taskQueue, no Agent yet: wait for it (it may allow its own queue)", observed(execution(taskQueue="gpu")), None, "Pending", "AgentNotFound", "waiting-for-agent"),
        ("disallowed taskQueue, no Agent past the TTL: Failed AgentNotFound", observed(execution(taskQueue="gpu", queued=LONG_AGO)), None, "Failed", "AgentNotFound", "agent-not-found"),
        ("disallowed taskQueue, agent present: still refused", observed(execution(taskQueue="elsewhere"), agent=agent()), None, "Failed", "TaskQueueNotAllowed", "task-queue-not-allowed"),
        ("the operator's runner queue is always allowed", observed(execution("echo", taskQueue="rq")), Start, None, None, ""),
        ("the Agent's own queue is allowed", observed(execution(taskQueue="gpu"), agent=agent(taskQueue="gpu")), Start, None, None, ""),
        ("a listed queue is allowed, unknown name sent as is", observed(execution("shout", taskQueue="shout"), policy=AgentPolicy(execution_task_queues=frozenset({"shout"}))), Start, None, None, ""),
        ("started before the policy: never refused", observed(execution(taskQueue="elsewhere") | {"status": {"phase": "Running", "workflow": dict(WF)}}), None, None, None, "running"),
    ],
)  # fmt: skip
def test_decide_with_agents(
    case: str,
    o: Observed,
    asks: type | None,
    phase: str | None,
    reason: str | None,
    outcome: str,
) -> None:
    d, _ = step(o)
    assert kind(d) == asks, case
    assert (d.status or {}).get("phase") == phase, (case, d.status)
    assert d.outcome == outcome, case
    if reason is not None:
        said = c.condition_of({"status": d.status}, c.WORKFLOW_STARTED)
        assert said is not None
        assert said["reason"] == reason, case


def test_start_carries_the_snapshot_with_merged_parameters() -> None:
    spec = started_with(
        observed(execution(parameters={"temperature": 0.9}), agent=agent(timeoutSeconds=30))
    )
    assert spec == AgentSpec(**{**SNAPSHOT.__dict__, "timeout_seconds": 30})


def test_an_agent_of_an_external_runner_starts_on_its_queue() -> None:
    # The way out a refused spec.taskQueue names: an Agent of the external
    # runner's type on its queue, though the policy allows no execution queue.
    shout = agent("loud", type="shout", taskQueue="shout", model=None, provider=None)
    shout["spec"] = {k: v for k, v in shout["spec"].items() if v is not None}
    spec = started_with(observed(execution("loud"), agent=shout))
    assert spec is not None
    assert spec.type == "shout"
    inp = build_input(execution("loud"), Config(runner_task_queue="rq"), spec)
    assert (inp.agent, inp.runner_task_queue) == ("shout", "shout")


def test_a_missing_agent_says_so_on_a_condition_and_once_as_a_warning() -> None:
    d = planner.decide(observed(execution()))
    cond = c.condition_of({"status": d.status}, c.AGENT_RESOLVED)
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "AgentNotFound")
    assert "'helper'" in cond["message"]
    assert "'ns'" in cond["message"]
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "AgentNotFound")]
    assert not d.remove_finalizer
    # The TTL is the deadline; the Agent appearing enqueues it sooner.
    assert d.requeue_after == pytest.approx(60.5)
    again = planner.decide(observed(execution() | {"status": d.status}))
    assert again.events == ()


def test_the_ttl_fails_a_missing_agent_with_its_name() -> None:
    d = planner.decide(observed(execution(queued=LONG_AGO)))
    assert d.status is not None
    assert d.status["error"]["reason"] == "AgentNotFound"
    assert "'helper'" in d.status["error"]["message"]
    assert "queue TTL of 60s" in d.status["error"]["message"]
    # It holds the finalizer (a start may have been sent once): the next pass
    # cancels by ID before it goes.
    assert not d.remove_finalizer
    assert d.requeue_after == 0
    assert d.events[0].reason == "AgentNotFound"


def test_a_refused_task_queue_names_the_queue_setting_and_the_way_out() -> None:
    d = planner.decide(observed(execution("echo", taskQueue="elsewhere")))
    assert d.status is not None
    message = d.status["error"]["message"]
    assert d.status["error"]["reason"] == "TaskQueueNotAllowed"
    assert "'elsewhere'" in message
    assert "AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE" in message
    assert "Agent's spec.taskQueue" in message
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "TaskQueueNotAllowed")]
    # Refused before the finalizer: nothing to cancel, nothing to write but status.
    fresh = execution("echo", taskQueue="elsewhere")
    fresh["metadata"].pop("finalizers")
    d = planner.decide(observed(fresh))
    assert not isinstance(d.request, AddFinalizer)
    assert (d.status or {}).get("phase") == "Failed"


def test_started_says_which_agent_generation_was_snapshotted() -> None:
    waited = planner.decide(observed(execution()))
    body = execution() | {"status": waited.status}
    d = planner.decide(observed(body, agent=agent(), answer=Answer(Outcome.STARTED, workflow=WF)))
    cond = c.condition_of({"status": d.status}, c.AGENT_RESOLVED)
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("True", "Resolved")
    assert "generation 3" in cond["message"]
    assert (d.status or {}).get("phase") == "Running"


def test_build_input_from_a_snapshot() -> None:
    settings = Config(runner_task_queue="rq")
    spec = build_agent_spec(agent(taskQueue="gpu", timeoutSeconds=30), {"temperature": 0.9})
    inp = build_input(execution(parameters={"temperature": 0.9}), settings, spec)
    assert inp.agent == "chat"  # the runner dispatches on the type
    assert inp.agent_spec == spec
    assert inp.parameters == {"temperature": 0.9, "maxTokens": 50}
    assert (inp.runner_task_queue, inp.timeout_seconds) == ("gpu", 30)
    # The execution's own queue and timeout win.
    own = build_input(execution(taskQueue="q2", timeoutSeconds=5), settings, spec)
    assert (own.runner_task_queue, own.timeout_seconds) == ("q2", 5)
    # Neither: the operator's defaults.
    plain = build_input(execution("echo"), settings)
    assert (plain.agent, plain.agent_spec, plain.runner_task_queue, plain.timeout_seconds) == (
        "echo",
        None,
        "rq",
        3600,
    )


@pytest.mark.parametrize(
    ("raw", "queues"),
    [("", ()), ("false", ()), ("true", ("*",)), ("*", ("*",)), ("b, a,,a", ("a", "b"))],
)
def test_the_execution_task_queue_setting(raw: str, queues: tuple[str, ...]) -> None:
    s = load_settings({"AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE": raw})
    assert s.execution_task_queues == queues


def test_a_bad_execution_task_queue_setting_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE"):
        load_settings({"AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE": " , "})


def test_an_agent_found_while_temporal_is_down_is_no_longer_said_missing() -> None:
    waited = planner.decide(observed(execution()))
    body = execution() | {"status": waited.status}
    d = planner.decide(observed(body, agent=agent(), conn=DOWN))
    assert d.outcome == "waiting"
    started = c.condition_of({"status": d.status}, c.WORKFLOW_STARTED)
    resolved = c.condition_of({"status": d.status}, c.AGENT_RESOLVED)
    assert started is not None
    assert resolved is not None
    assert started["reason"] == "WaitingForTemporal"
    assert (resolved["status"], resolved["reason"]) == ("True", "Resolved")


def watched(uid: str, rv: str, **spec: Any) -> dict[str, Any]:
    """An Agent as the watch delivers it: with the metadata and status the cache drops."""
    body = agent(**spec)
    body["metadata"].update(
        uid=uid,
        resourceVersion=rv,
        annotations={"kubectl.kubernetes.io/last-applied-configuration": "x" * 1000},
        managedFields=[{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        labels={"team": "a"},
    )
    body["spec"]["futureField"] = {"big": "y" * 1000}
    body["status"] = {"observedGeneration": 3}
    return body


def test_the_agent_cache_keeps_what_the_snapshot_needs_and_no_more() -> None:
    cache = AgentCache()
    full = watched("ag1", "10", taskQueue="gpu", timeoutSeconds=60)
    assert cache.put(full)
    slim = cache.get("ns", "helper")
    assert slim is not None
    assert slim == slim_agent(full)
    assert set(slim) == {"metadata", "spec"}
    assert set(slim["metadata"]) == {"name", "namespace", "uid", "generation", "resourceVersion"}
    assert "futureField" not in slim["spec"]
    # The snapshot (and so the workflow input) is the same from the slim copy.
    params = {"temperature": 0.5}
    assert build_agent_spec(slim, params) == build_agent_spec(full, params)
    assert slim["spec"]["taskQueue"] == "gpu"  # resolve() reads it for the queue policy


@pytest.mark.parametrize(
    ("held", "event", "changed", "kept_rv"),
    [
        # (uid, rv) held; (type, uid, rv) seen; did the cache change; the rv held after (None: none).
        (("ag1", "10"), ("MODIFIED", "ag1", "11"), True, "11"),
        (("ag1", "10"), ("MODIFIED", "ag1", "9"), False, "10"),  # a stale listing loses
        (("ag1", "10"), ("MODIFIED", "ag1", "10"), False, "10"),
        (("ag1", "10"), ("ADDED", "ag2", "5"), True, "5"),  # re-created: a new uid wins, any rv
        (("ag1", "10"), ("DELETED", "ag1", "12"), True, None),
        # A late DELETED of the Agent this name used to be: the re-created one stays.
        (("ag2", "20"), ("DELETED", "ag1", "12"), False, "20"),
        (None, ("DELETED", "ag1", "12"), False, None),
        (None, ("ADDED", "ag1", "1"), True, "1"),
    ],
)
def test_the_agent_cache_only_moves_forward_and_deletes_the_agent_deleted(
    held: tuple[str, str] | None, event: tuple[str, str, str], changed: bool, kept_rv: str | None
) -> None:
    cache = AgentCache()
    if held is not None:
        cache.put(watched(*held))
    kind, uid, rv = event
    seen = watched(uid, rv)
    assert (cache.remove(seen) if kind == "DELETED" else cache.put(seen)) is changed
    now = cache.get("ns", "helper")
    assert (now["metadata"]["resourceVersion"] if now else None) == kept_rv
