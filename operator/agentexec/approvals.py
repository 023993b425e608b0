"""AgentApprovals: which of them the operator relays to a waiting agent loop,
and what it says on each. Pure: the controller hands in the execution and the
AgentApprovals it holds in its cache.

Creating an AgentApproval is the approval right (RBAC on agentapprovals); its
``spec.approver`` is the creator's user name, set and checked at admission
(the chart's admission policies). The operator never trusts a name from
anywhere else, and the workflow keeps the first decision for each call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentexec.temporal.steps import ApprovalDecision

APPLIED = "Applied"
Body = Mapping[str, Any]


@dataclass(frozen=True)
class Relay:
    """What to do about one AgentApproval: signal its decision (when the
    execution waits for that call), then say whether it applied."""

    name: str
    signal: ApprovalDecision | None
    applied: bool
    reason: str
    message: str


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def applied_of(approval: Body) -> bool:
    """Whether the operator already said what came of it."""
    conditions = _mapping(approval.get("status")).get("conditions")
    return isinstance(conditions, list) and any(
        isinstance(c, Mapping) and c.get("type") == APPLIED for c in conditions
    )


def build_decision(approval: Body) -> ApprovalDecision:
    spec, meta = _mapping(approval.get("spec")), _mapping(approval.get("metadata"))
    return ApprovalDecision(
        id=str(spec.get("id", "")),
        approve=spec.get("decision") == "Approve",
        approver=str(spec.get("approver", "")),
        reason=str(spec.get("reason") or "")[:1024],
        approval=str(meta.get("name", "")),
    )


def plan_approvals(execution: Body, approvals: Iterable[Body], terminal: bool) -> list[Relay]:
    """The AgentApprovals naming ``execution`` that are not settled yet, each
    with what to do now. One waiting for a call the loop has not reached is
    left alone (the loop may reach it later: an approval given ahead)."""
    status = _mapping(execution.get("status"))
    pending = _mapping(status.get("pendingApproval"))
    last = _mapping(status.get("lastApproval"))
    relays: list[Relay] = []
    for approval in approvals:
        if applied_of(approval):
            continue
        decision = build_decision(approval)
        if pending and decision.id == pending.get("id"):
            relays.append(
                Relay(
                    decision.approval,
                    decision,
                    True,
                    "Relayed",
                    f"{'approval' if decision.approve else 'rejection'} of call {decision.id} "
                    f"(tool {pending.get('tool')!r}) sent to the workflow",
                )
            )
        elif last and decision.id == last.get("id"):
            mine = last.get("approval") == decision.approval
            relays.append(
                Relay(
                    decision.approval,
                    None,
                    mine,
                    "Relayed" if mine else "AlreadyDecided",
                    "applied"
                    if mine
                    else f"call {decision.id} was already {str(last.get('decision')).lower()} "
                    f"by {last.get('approver') or 'its timeout'}",
                )
            )
        elif terminal:
            relays.append(
                Relay(
                    decision.approval,
                    None,
                    False,
                    "NotPending",
                    f"the execution has finished; call {decision.id} was never waited for",
                )
            )
    return relays


def slim_approval(body: Body) -> dict[str, Any]:
    """What plan_approvals reads of an AgentApproval, and no more."""
    meta = _mapping(body.get("metadata"))
    return {
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta
        },
        "spec": dict(_mapping(body.get("spec"))),
        "status": {"conditions": _mapping(body.get("status")).get("conditions") or []},
    }
