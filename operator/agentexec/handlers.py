"""kopf, used for what it is best at: login, watch streams, probes.

Every watch event goes to the controller, which caches it and enqueues the
key; reconciliation, finalizers and status writes are the controller's. kopf
writes nothing to our objects (no changing handlers: no kopf finalizer, no
progress or last-handled annotations).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from agentexec.controller import Controller
from agentexec.kube import AGENT_PLURAL, APPROVAL_PLURAL, GROUP, PLURAL, POLICY_PLURAL, VERSION
from agentexec.policy import PolicyCache

registry = kopf.OperatorRegistry()
log = logging.getLogger("agentexec.handlers")


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the current kubeconfig."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
        **kwargs
    ) or kopf.login_with_kubeconfig(**kwargs)
    return info


@kopf.on.startup(registry=registry)
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Tune kopf; never touches Temporal (startup handlers block all watching)."""
    settings.posting.enabled = False  # our events are aggregated by the controller
    # kopf #996/#1276: a watch can stall silently; bound every watch request
    # so a dead connection is replaced within minutes, not never.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # Leadership is a coordination.k8s.io Lease (agentexec.leader), not kopf
    # peering (priority-based; an old pod can freeze its successor, kopf #734).
    settings.peering.standalone = True


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def observe(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # async on purpose: kopf runs sync handlers in a thread pool, and this one
    # runs for every watch event.
    controller: Controller = memo.controller
    raw = event.get("object")
    controller.on_event(event.get("type"), raw if isinstance(raw, dict) else dict(body))


@kopf.on.event(GROUP, VERSION, AGENT_PLURAL, registry=registry)
async def observe_agent(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Agents are only read: cached, and their waiting executions enqueued.
    controller: Controller = memo.controller
    raw = event.get("object")
    controller.on_agent_event(event.get("type"), raw if isinstance(raw, dict) else dict(body))


@kopf.on.event(GROUP, VERSION, APPROVAL_PLURAL, registry=registry)
async def observe_approval(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    # AgentApprovals: cached, and the execution they name enqueued.
    controller: Controller = memo.controller
    raw = event.get("object")
    controller.on_approval_event(event.get("type"), raw if isinstance(raw, dict) else dict(body))


@kopf.on.event(GROUP, VERSION, POLICY_PLURAL, registry=registry)
async def observe_policy(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # ExecutionPolicies are only read here (their status is the ledger's).
    policies: PolicyCache = memo.policies
    raw = event.get("object")
    obj = raw if isinstance(raw, dict) else dict(body)
    if event.get("type") == "DELETED":
        policies.remove(obj)
    else:
        policies.put(obj)
