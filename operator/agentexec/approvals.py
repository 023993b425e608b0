"""An agent loop's approvals: what its reports write on the execution
(progress, pendingApproval, lastApproval, the AwaitingApproval condition),
which AgentApprovals the operator relays to the waiting loop, and what it
says on each. Pure: reconcile hands in the execution and the AgentApprovals
it holds in its cache (``ApprovalCache``); the signals and the AgentApprovals'
status writes are requests and parts of the decision the executor makes.

Creating an AgentApproval is the approval right (RBAC on agentapprovals); its
``spec.approver`` is the creator's user name, set and checked at admission
(the chart's admission policies). The operator never trusts a name from
anywhere else, and the workflow keeps the first decision for each call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from agentexec.conditions import (
    ALREADY_DECIDED,
    APPLIED,
    APPROVAL_REQUESTED,
    AWAITING_APPROVAL,
    NOT_PENDING,
    NOT_WAITING,
    RELAYED,
    WORKFLOW_NOT_RUNNING,
    Body,
    Condition,
    build_conditions,
    condition_of,
    status_of,
)
from agentexec.decisions import ApprovalStatus, Decision, Event, Observed, SignalApproval
from agentexec.status import StatusPatch, is_terminal, meta_of, recorded_workflow
from agentexec.temporal.steps import ApprovalDecision
from agentexec.temporal.types import Outcome

# A decision Temporal could not be told of (no answer, refused) is tried again
# this soon (the AgentApproval keeps saying nothing meanwhile).
RELAY_RETRY_SECONDS = 2.0
Key = tuple[str, str]


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
                    RELAYED,
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
                    RELAYED if mine else ALREADY_DECIDED,
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
                    NOT_PENDING,
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


class ApprovalCache:
    """The AgentApprovals the watch delivered, slim, by the execution they name."""

    def __init__(self) -> None:
        self._by_execution: dict[Key, dict[str, dict[str, Any]]] = {}
        self._named: dict[Key, Key] = {}  # (namespace, name) -> the execution's key

    def put(self, body: Body) -> Key | None:
        """Hold ``body``; the key of the execution it names (None: it names none)."""
        meta, spec = _mapping(body.get("metadata")), _mapping(body.get("spec"))
        namespace, name, execution = meta.get("namespace"), meta.get("name"), spec.get("execution")
        if not (isinstance(namespace, str) and isinstance(name, str)):
            return None
        self.remove(namespace, name)
        if not isinstance(execution, str):
            return None
        key = (namespace, execution)
        self._by_execution.setdefault(key, {})[name] = slim_approval(body)
        self._named[(namespace, name)] = key
        return key

    def remove(self, namespace: str, name: str) -> None:
        key = self._named.pop((namespace, name), None)
        held = self._by_execution.get(key) if key is not None else None
        if key is not None and held is not None:
            held.pop(name, None)
            if not held:
                del self._by_execution[key]

    def of(self, key: Key) -> tuple[dict[str, Any], ...]:
        """The AgentApprovals naming the execution ``key``."""
        return tuple(self._by_execution.get(key, {}).values())

    def unsettled(self) -> list[Key]:
        """The executions named by an AgentApproval the operator has not said
        anything on yet (a new leader looks at each)."""
        return [
            key
            for key, held in self._by_execution.items()
            if any(not applied_of(a) for a in held.values())
        ]

    def absent(self, namespace: str | None, listed: Mapping[Key, str]) -> list[Key]:
        """(namespace, name) of those held that a complete listing (key: uid)
        does not have: deleted while the watch was away."""
        return [
            named
            for named, key in self._named.items()
            if (namespace is None or named[0] == namespace)
            and listed.get(named)
            != _mapping(self._by_execution[key][named[1]].get("metadata")).get("uid")
        ]

    def __len__(self) -> int:
        return len(self._named)


def plan_loop_status(
    body: Body, fields: Mapping[str, Any], now: datetime, conditions: list[dict[str, Any]]
) -> tuple[StatusPatch, tuple[Event, ...]]:
    """An agent loop's report (status.progress, pendingApproval, lastApproval)
    as status fields, the AwaitingApproval condition upserted into
    ``conditions`` (a patch's full list), and the events it is news for: a
    call that began waiting, a decision (with who gave it)."""
    status = status_of(body)
    patch: StatusPatch = {
        k: fields[k] for k in ("progress", "pendingApproval", "lastApproval") if k in fields
    }
    pending, last = fields.get("pendingApproval"), fields.get("lastApproval")
    was, had = _mapping(status.get("pendingApproval")), _mapping(status.get("lastApproval"))
    events: list[Event] = []
    name = str(meta_of(body).get("name", ""))
    if isinstance(pending, Mapping):
        message = (
            f"step {pending.get('step')}: tool {pending.get('tool')!r} waits for approval "
            f"(call {pending.get('id')}, {pending.get('timeoutSeconds')}s, then "
            f"{pending.get('onTimeout')}): kubectl agentexec approve {name} (or reject)"
        )
        update = Condition(AWAITING_APPROVAL, "True", APPROVAL_REQUESTED, message)
        if pending.get("id") != was.get("id"):
            events.append(Event("Normal", APPROVAL_REQUESTED, message))
    else:
        decided = str(_mapping(last).get("decision") or NOT_WAITING)
        update = Condition(AWAITING_APPROVAL, "False", decided, "no tool call waits for approval")
    if isinstance(last, Mapping) and last.get("id") != had.get("id"):
        who = last.get("approver") or "the approval timeout"
        reason = f": {last.get('reason')}" if last.get("reason") else ""
        events.append(
            Event(
                "Normal",
                str(last.get("decision") or "Decided"),
                f"call {last.get('id')} {str(last.get('decision')).lower()} by {who}{reason}",
            )
        )
    if isinstance(pending, Mapping) or condition_of(body, AWAITING_APPROVAL) is not None:
        patch["conditions"] = build_conditions(
            {"metadata": meta_of(body), "status": {"conditions": conditions}}, [update], now
        )
    return patch, tuple(events)


def plan_relays(o: Observed, decision: Decision) -> Decision:
    """``decision`` with the AgentApprovals of the execution relayed.

    They are planned on the execution as the decision leaves it (a report
    may have just said which call waits). Each one its loop waits for is
    first a ``SignalApproval`` request (answered in ``o.signalled``); then
    every settled one gets its ``Applied`` condition, written with the
    decision. One Temporal could not be told of is tried again shortly.
    """
    if not o.approvals or decision.request is not None or decision.delete:
        return decision
    after = {**o.body, "status": {**status_of(o.body), **(decision.status or {})}}
    recorded = recorded_workflow(after)
    held = {str(_mapping(a.get("metadata")).get("name", "")): a for a in o.approvals}
    writes: list[ApprovalStatus] = []
    retry = False
    for relay in plan_approvals(after, o.approvals, is_terminal(after)):
        if relay.signal is not None:
            answer = o.signalled.get(relay.name)
            if not recorded.get("id"):
                continue  # (a loop that reported has a workflow recorded)
            if answer is None:
                return Decision(
                    request=SignalApproval(
                        str(recorded["id"]), recorded.get("namespace"), relay.signal
                    )
                )
            if answer.outcome is Outcome.REJECTED and answer.reason == WORKFLOW_NOT_RUNNING:
                # The loop ended meanwhile: nothing waits for this decision.
                relay = replace(
                    relay,
                    applied=False,
                    reason=WORKFLOW_NOT_RUNNING,
                    message="the execution's workflow ended before the decision reached it",
                )
            elif answer.outcome is not Outcome.SIGNALLED:
                retry = True
                continue
        applied = Condition(
            APPLIED, "True" if relay.applied else "False", relay.reason, relay.message
        )
        conditions = build_conditions(held.get(relay.name, {}), [applied], o.now)
        writes.append(ApprovalStatus(relay.name, conditions))
    if retry and decision.backoff is None:
        after_s = decision.requeue_after
        decision = replace(
            decision,
            requeue_after=RELAY_RETRY_SECONDS
            if after_s is None
            else min(after_s, RELAY_RETRY_SECONDS),
        )
    return replace(decision, approvals=tuple(writes)) if writes else decision
