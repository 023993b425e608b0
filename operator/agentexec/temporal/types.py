"""The data that crosses Temporal: workflow and activity inputs and results.

Plain dataclasses only: the workflow sandbox re-imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExecutionRef:
    """Which AgentExecution a workflow runs for."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class ExecutionInput:
    ref: ExecutionRef
    agent: str
    message: str
    runner_task_queue: str
    timeout_seconds: int
    session_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentRequest:
    """What a runner's ``run_agent`` activity receives."""

    agent: str
    message: str
    session_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    execution: ExecutionRef | None = None


@dataclass(frozen=True)
class AgentResult:
    output: str


@dataclass(frozen=True)
class ExecutionResult:
    """How the execution ended; also what the workflow reports to the resource."""

    phase: str  # Running, Succeeded, Failed or Cancelled
    output: str | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class StatusReport:
    """The workflow's report to the resource, written by ``report_status``."""

    ref: ExecutionRef
    result: ExecutionResult
    workflow_id: str
    run_id: str


# Names that tie the workflow to its activities and runners. An external
# runner in any language registers an activity named RUN_AGENT_ACTIVITY.
WORKFLOW_TYPE = "AgentExecution"
RUN_AGENT_ACTIVITY = "run_agent"
REPORT_STATUS_ACTIVITY = "report_status"
# ApplicationError types that retrying cannot fix.
AGENT_ERROR = "AgentError"
UNKNOWN_AGENT = "UnknownAgent"
