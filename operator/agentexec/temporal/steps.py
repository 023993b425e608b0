"""The data of the agent loop (Agents of ``type: assistant``): its input, its
steps' activities, approvals and progress. See temporal/loop.py.

Plain dataclasses only: the workflow sandbox re-imports this module. Every
field added later needs a default, so that running loops' histories decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentexec.conditions import APPROVAL_TIMEOUT as APPROVAL_TIMEOUT
from agentexec.conditions import BUDGET_EXCEEDED as BUDGET_EXCEEDED
from agentexec.conditions import TOOL_FAILED as TOOL_FAILED
from agentexec.conditions import TOOLS_UNAVAILABLE as TOOLS_UNAVAILABLE
from agentexec.temporal.attempts import BookState
from agentexec.temporal.types import AgentSpec, ExecutionInput, ExecutionRef, Usage

LOOP_WORKFLOW_TYPE = "AgentLoop"
ASSISTANT = "assistant"  # the Agent type whose executions run the loop
# Activities the runners of the execution's queue serve (any language may).
LIST_TOOLS_ACTIVITY = "agent_list_tools"
MODEL_CALL_ACTIVITY = "agent_model_call"
TOOL_CALL_ACTIVITY = "agent_tool_call"
# The signal the operator sends when an AgentApproval decides a pending call.
APPROVAL_SIGNAL = "approval"
# The query `kubectl agentexec steps` follows.
STEPS_QUERY = "steps"

# What a step is doing (status.progress.current, the printer column).
MODEL = "model"
TOOL = "tool"
APPROVAL = "approval"

# How a tool failure is handled (spec.tools[].onError).
REPORT = "Report"  # the model is told, and decides
FAIL = "Fail"  # the execution fails with ToolFailed
# What an approval that nobody gave within its timeout becomes (onTimeout).
APPROVE, REJECT = "Approve", "Reject"
APPROVAL_OUTCOMES = (APPROVE, REJECT, FAIL)

# Reasons the loop can end with (status.error.reason): named in agentexec.conditions.
# An ApplicationError type a tool-call activity raises when the tool server
# answered with a protocol error or cannot be reached (retried by policy).
TOOL_SERVER_ERROR = "ToolServerError"


@dataclass(frozen=True)
class ToolServer:
    """One MCP server an assistant may use (the Agent's ``spec.tools[]``),
    its address resolved by the operator (a URL, or a Service in the
    execution's namespace), or a server configured on the runners, whose URL
    and headers (credentials from Secrets) only the runner knows."""

    name: str
    url: str
    allow: list[str] = field(default_factory=list)  # empty: every tool it lists
    require_approval: list[str] = field(default_factory=list)  # tool names, "*": all
    on_error: str = REPORT
    timeout_seconds: int = 60  # one call, the server's answer included
    configured: str = ""  # a server of the runners' MCP servers file (runner/tools.py)


@dataclass(frozen=True)
class ApprovalPolicy:
    """When the loop waits for a person (the Agent's ``spec.approval``)."""

    after_steps: int | None = None  # every tool call past this step needs approval
    after_tokens: int | None = None  # every tool call past this spend needs approval
    timeout_seconds: int = 3600
    on_timeout: str = REJECT


@dataclass(frozen=True)
class LoopSpec:
    """How the loop runs, from the Agent (and the execution's limits)."""

    tools: list[ToolServer] = field(default_factory=list)
    max_steps: int = 20
    approval: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    max_tokens: int | None = None  # the execution's spec.limits.maxTokens
    tool_choice: Any = None  # parameters.toolChoice: auto, required, none, or a tool name


@dataclass(frozen=True)
class Tool:
    """A tool as the model sees it, and which server serves it."""

    server: str
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # JSON Schema


@dataclass(frozen=True)
class StepRecord:
    """One thing the loop did, as `kubectl agentexec steps` shows it."""

    step: int
    kind: str  # model, tool or approval
    name: str = ""  # the tool's name
    detail: str = ""  # bounded: the answer's start, the tool's arguments and result
    tokens: int = 0
    error: bool = False
    at: str = ""  # ISO time (workflow time)


@dataclass(frozen=True)
class PendingApproval:
    """A tool call waiting for a person: status.pendingApproval."""

    id: str  # unique in the execution: "<step>-<call index>"
    step: int
    tool: str
    server: str
    arguments: str  # as the model wrote them (JSON), bounded
    since: str  # ISO time
    timeout_seconds: int
    on_timeout: str


@dataclass(frozen=True)
class ApprovalDecision:
    """What an AgentApproval said, relayed by the operator as a signal."""

    id: str
    approve: bool
    approver: str  # the API server's user name of whoever created the AgentApproval
    reason: str = ""
    approval: str = ""  # the AgentApproval's name


@dataclass(frozen=True)
class Progress:
    """status.progress: where the loop is, reported at a bounded rate."""

    step: int
    max_steps: int
    current: str  # model, tool <name>, approval <name>, done
    tool_calls: int = 0
    usage: Usage | None = None
    pending_approval: PendingApproval | None = None
    last_approval: ApprovalDecision | None = None


@dataclass(frozen=True)
class LoopState:
    """What the loop carries across continue-as-new."""

    messages: list[dict[str, Any]]  # the conversation (OpenAI chat format), no system prompt
    tools: list[Tool]
    step: int = 0
    tool_calls: int = 0
    records: list[StepRecord] = field(default_factory=list)  # the latest only (bounded)
    decisions: list[ApprovalDecision] = field(default_factory=list)  # given so far
    last_approval: ApprovalDecision | None = None
    runs: int = 1  # workflow runs so far (continue-as-new)
    # The attempts, their clock (the deadline counts attempts' running time:
    # not waits for a runner, for approval or while suspended) and the bill.
    book: BookState = field(default_factory=BookState)


@dataclass(frozen=True)
class LoopInput:
    execution: ExecutionInput
    loop: LoopSpec = field(default_factory=LoopSpec)
    state: LoopState | None = None  # set when continued as new
    progress_interval_seconds: float = 5.0  # the most often progress is written (at step ends)
    # Continue as new past this many history events, or when Temporal suggests
    # it (its limits are 51 200 events and 50 MB).
    max_history_events: int = 10_000


@dataclass(frozen=True)
class ListToolsRequest:
    execution: ExecutionRef
    servers: list[ToolServer]


@dataclass(frozen=True)
class ListToolsResult:
    tools: list[Tool]


@dataclass(frozen=True)
class ModelCallRequest:
    execution: ExecutionRef
    step: int
    agent_spec: AgentSpec  # model, provider, system prompt, parameters
    messages: list[dict[str, Any]]
    tools: list[Tool] = field(default_factory=list)
    tool_choice: Any = None  # as the API takes it
    max_tokens: int | None = None  # what the budget leaves for this answer
    # Which attempt of the step this is, and the previous attempt's
    # checkpoint (a request it had sent: this one is billed as re-sent).
    attempt: int | None = None
    resume_from: Any = None


@dataclass(frozen=True)
class ModelCallResult:
    message: dict[str, Any]  # the assistant's message: content and tool_calls
    usage: Usage | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class ToolCallRequest:
    execution: ExecutionRef
    step: int
    call_id: str
    server: ToolServer
    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolCallResult:
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class StepsView:
    """What the steps query answers: where the loop is, and its latest steps."""

    progress: Progress
    records: list[StepRecord]
    runs: int = 1
    done: bool = False


def build_progress_status(progress: Progress, now: str) -> dict[str, Any]:
    """The status fields a progress report writes (API casing):
    ``progress``, ``pendingApproval`` (null once decided) and ``lastApproval``."""
    usage = progress.usage or Usage()
    fields: dict[str, Any] = {
        "progress": {
            "step": progress.step,
            "maxSteps": progress.max_steps,
            "current": progress.current,
            "toolCalls": progress.tool_calls,
            "totalTokens": usage.total_tokens,
            "updateTime": now,
        },
        "pendingApproval": None,
    }
    pending = progress.pending_approval
    if pending is not None:
        fields["pendingApproval"] = {
            "id": pending.id,
            "step": pending.step,
            "tool": pending.tool,
            "server": pending.server,
            "arguments": pending.arguments,
            "since": pending.since,
            "timeoutSeconds": pending.timeout_seconds,
            "onTimeout": pending.on_timeout,
        }
    last = progress.last_approval
    if last is not None:
        fields["lastApproval"] = {
            "id": last.id,
            "decision": "Approved" if last.approve else "Rejected",
            "approver": last.approver,
            "reason": last.reason,
            "approval": last.approval,
        }
    return fields


def _int(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def build_tool_server(entry: Mapping[str, Any], namespace: str) -> ToolServer:
    """One ``spec.tools[]`` entry: its URL, or its Service's in-cluster URL."""
    url = entry.get("url")
    service = entry.get("service")
    configured = entry.get("configuredServer")
    if isinstance(configured, str) and configured:
        url = ""  # the runner's MCP servers file has it
    elif not isinstance(url, str) and isinstance(service, Mapping):
        path = str(service.get("path") or "/mcp")
        url = (
            f"http://{service.get('name')}.{namespace}.svc:{service.get('port')}"
            f"{path if path.startswith('/') else '/' + path}"
        )
    return ToolServer(
        name=str(entry.get("name", "")),
        url=str(url or ""),
        allow=_names(entry.get("allow")),
        require_approval=_names(entry.get("requireApproval")),
        on_error=FAIL if entry.get("onError") == FAIL else REPORT,
        timeout_seconds=_int(entry.get("timeoutSeconds"), None) or 60,
        configured=configured if isinstance(configured, str) else "",
    )


def build_loop_spec(
    agent: Mapping[str, Any] | None,
    namespace: str,
    max_tokens: int | None = None,
    tool_choice: Any = None,
) -> LoopSpec:
    """The loop's settings from an Agent snapshot's ``loop`` (its spec's
    tools, maxSteps and approval, as the resource has them), the execution's
    ``spec.limits.maxTokens`` and ``parameters.toolChoice``."""
    agent = agent or {}
    approval = agent.get("approval")
    approval = approval if isinstance(approval, Mapping) else {}
    on_timeout = approval.get("onTimeout")
    tools = agent.get("tools")
    return LoopSpec(
        tools=[
            build_tool_server(t, namespace)
            for t in (tools if isinstance(tools, list) else [])
            if isinstance(t, Mapping)
        ],
        max_steps=max(1, _int(agent.get("maxSteps"), None) or 20),
        approval=ApprovalPolicy(
            after_steps=_int(approval.get("afterSteps"), None),
            after_tokens=_int(approval.get("afterTokens"), None),
            timeout_seconds=_int(approval.get("timeoutSeconds"), None) or 3600,
            on_timeout=on_timeout if on_timeout in APPROVAL_OUTCOMES else REJECT,
        ),
        max_tokens=max_tokens,
        tool_choice=tool_choice,
    )
