"""What reconcile and the planner say to each other: the observation a decision
is made on, the requests a decision may need answered first, and the
decision itself. Pure data (and the workflow input built from a spec).

The loop is in reconciler.py; the decisions in planner.py; the calls are
made by executor.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentexec import lifecycle
from agentexec.agents import AgentPolicy
from agentexec.backoff import START_REFUSED_BUDGET
from agentexec.conditions import Body
from agentexec.policy import NamespacePolicy, token_limit
from agentexec.status import (
    Connection,
    StatusPatch,
    meta_of,
    recorded_workflow,
    uid_of,
    workflow_id,
)
from agentexec.temporal.steps import ASSISTANT, ApprovalDecision, LoopInput, build_loop_spec
from agentexec.temporal.types import (
    AgentSpec,
    Answer,
    ExecutionInput,
    ExecutionRef,
    StatusReport,
)


@dataclass(frozen=True)
class Config:
    """What the settings say that decisions depend on (built once at start)."""

    queue_ttl: float = 3600.0
    finished_ttl: float | None = None  # default ttlSecondsAfterFinished (None: keep)
    policy: AgentPolicy = field(default_factory=AgentPolicy)  # built-in names, allowed queues
    runner_task_queue: str = "agentexec-runner"
    no_runner_seconds: int = 60
    report_timeout_seconds: int = 600
    heartbeat_timeout_seconds: int = 30
    max_disruptions: int = 10  # attempts cut short by the platform before Failed/Disrupted
    progress_interval: float = 5.0  # an agent loop's progress reports, at most this often
    start_rate: float = 200.0  # only said in the Queued message
    start_refused_budget: int = START_REFUSED_BUDGET
    # How long a start that got no answer may still land in Temporal: the
    # SDK retries a call for about 10 s, each attempt up to the RPC timeout.
    start_in_flight: float = 20.0
    install: str = ""  # AGENTEXEC_INSTALL: recorded in each workflow's input


@dataclass(frozen=True)
class ReadExecution:
    """Read the execution from the API server: our view conflicted with it, or
    a report names another object of the same name."""


@dataclass(frozen=True)
class ReadAgent:
    """Read the Agent of this name from the API server (one applied with its
    execution may not have reached the cache, and would lose to a built-in
    agent of the same name)."""

    name: str


@dataclass(frozen=True)
class TakeStartSlot:
    """A turn at the start rate: now, or how many seconds from now."""


@dataclass(frozen=True)
class TakeDeleteSlot:
    """A turn at the TTL delete rate: now, or how many seconds from now."""


@dataclass(frozen=True)
class AddFinalizer:
    """Add our finalizer: a start may be sent from now on."""


@dataclass(frozen=True)
class Start:
    workflow_id: str
    input: ExecutionInput | LoopInput  # an assistant's runs the agent loop


@dataclass(frozen=True)
class Describe:
    workflow: Mapping[str, Any]  # id, runId, namespace as recorded


@dataclass(frozen=True)
class Cancel:
    workflow_id: str
    namespace: str | None  # as recorded; None: the operator's


@dataclass(frozen=True)
class SignalSuspend:
    """Tell the running workflow what spec.suspend now says (it sets a value:
    sending it twice is harmless)."""

    workflow_id: str
    namespace: str | None
    suspend: bool


@dataclass(frozen=True)
class SignalApproval:
    """Relay an AgentApproval's decision to the agent loop waiting for that
    call; its answer comes back by the AgentApproval's name."""

    workflow_id: str
    namespace: str | None
    decision: ApprovalDecision


Request = (
    ReadExecution
    | ReadAgent
    | TakeStartSlot
    | TakeDeleteSlot
    | AddFinalizer
    | Start
    | Describe
    | Cancel
    | SignalSuspend
    | SignalApproval
)


@dataclass(frozen=True)
class ApprovalStatus:
    """An AgentApproval's status to write (its Applied condition), after the
    execution's own status write."""

    name: str  # in the execution's namespace
    conditions: list[dict[str, Any]]


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Quota:
    """The namespace's running quota as it stands for one unstarted execution."""

    limit: int  # concurrency.maxRunning (the smallest of the namespace's policies)
    running: int  # executions of the namespace with a workflow, or a start in flight
    ahead: int  # older executions of the namespace waiting to start
    # Older executions whose start is in flight (counted in running): a
    # younger one's start waits for theirs, so that they start in order.
    in_flight: int = 0


@dataclass(frozen=True)
class Observed:
    """Everything a decision depends on, read fresh for each reconcile."""

    body: Body  # the execution as the watch (or our last write) has it
    conn: Connection
    now: datetime
    config: Config = field(default_factory=Config)
    report: StatusReport | None = None  # what the workflow reported, not yet applied
    check: bool = False  # verify a started execution against Temporal (it closed, or vanished)
    agent: Body | None = None  # the Agent that spec.agent names, as cached (None: none)
    # The namespace's ExecutionPolicies (#22), and its quota when one is set.
    policies: tuple[NamespacePolicy, ...] = ()
    quota: Quota | None = None
    retries: int = 0  # reconciles of this key that backed off in a row
    # Seconds since this process sent a start of this execution that got no
    # answer (None: none did): it may land in Temporal until start_in_flight.
    unanswered_start: float | None = None
    stale: bool = False  # a write conflicted: read the object before deciding
    # What the calls asked for in this reconcile came back with:
    refreshed: bool = False  # the body was just read from the API server
    agent_read: bool = False  # the Agent was asked of the API server
    # The AgentApprovals naming this execution, as cached, and what Temporal
    # answered each one's signal in this reconcile (by AgentApproval name).
    approvals: tuple[Body, ...] = ()
    signalled: Mapping[str, Answer] = field(default_factory=dict)
    start_slot: float | None = None  # seconds until its turn to start (0: now)
    delete_slot: float | None = None  # seconds until its turn to be deleted (0: now)
    answer: Answer | None = None  # Temporal's answer to the Start / Describe / Cancel
    # Temporal's answer to the SignalSuspend (it may follow a describe that
    # found the workflow running).
    suspend_answer: Answer | None = None


@dataclass(frozen=True)
class Decision:
    request: Request | None = None  # make this call, then decide again with its result
    status: StatusPatch | None = None
    remove_finalizer: bool = False  # after the status write
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    delete: bool = False  # delete the execution (its TTL after finishing ran out)
    report_done: bool = False  # the pending report is applied (or moot)
    backoff: str | None = None  # not done: retry with per-key backoff (why)
    check_done: bool = True  # False: a check against Temporal is still owed
    approvals: tuple[ApprovalStatus, ...] = ()  # AgentApprovals' statuses to write
    # Tokens the execution spent, to count against its namespace's budgets
    # once the status that ends it is written (ExecutionPolicy status.budget).
    charge: int = 0
    outcome: str = ""  # what happened, for logs and metrics


def build_input(body: Body, config: Config, agent: AgentSpec | None = None) -> ExecutionInput:
    """The workflow input from the spec; defaults for anything odd or missing.

    With an Agent snapshot, the runner is sent the Agent's type as the agent,
    the merged parameters, and the Agent's queue and timeout unless the
    execution names its own.
    """
    meta = meta_of(body)
    spec = body.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    params = spec.get("parameters")
    queue = spec.get("taskQueue")
    session = spec.get("sessionId")
    if not (isinstance(queue, str) and queue):
        queue = (agent.task_queue if agent else None) or config.runner_task_queue
    timeout, deadline_field = lifecycle.deadline_of(spec, agent)
    return ExecutionInput(
        ref=ExecutionRef(str(meta["namespace"]), str(meta["name"]), str(meta["uid"])),
        agent=agent.type if agent else str(spec.get("agent", "")),
        message=str(spec.get("message", "")),
        runner_task_queue=queue,
        timeout_seconds=timeout,
        session_id=session if isinstance(session, str) else None,
        parameters=dict(
            agent.parameters if agent else params if isinstance(params, Mapping) else {}
        ),
        no_runner_seconds=config.no_runner_seconds,
        report_timeout_seconds=config.report_timeout_seconds,
        agent_spec=agent,
        heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
        max_tokens=token_limit(spec),
        backoff_limit=lifecycle.backoff_limit_of(spec),
        max_disruptions=config.max_disruptions,
        deadline_field=deadline_field,
        install=config.install,
    )


def build_start_input(
    body: Body, config: Config, agent: AgentSpec | None = None
) -> ExecutionInput | LoopInput:
    """The workflow input: an assistant's runs the agent loop (LoopInput)."""
    inp = build_input(body, config, agent)
    if agent is None or agent.type != ASSISTANT:
        return inp
    spec = body.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    return LoopInput(
        execution=inp,
        loop=build_loop_spec(
            agent.loop, inp.ref.namespace, token_limit(spec), inp.parameters.get("toolChoice")
        ),
        progress_interval_seconds=config.progress_interval,
    )


def own_workflow_id(body: Body) -> str:
    """The workflow ID recorded in status, else the one derived from the object."""
    recorded = recorded_workflow(body).get("id")
    if recorded:
        return str(recorded)
    meta = meta_of(body)
    return workflow_id(str(meta.get("namespace")), str(meta.get("name")), uid_of(body))
