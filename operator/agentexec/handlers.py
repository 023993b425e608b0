"""kopf, used for what it is best at: login, watch streams, probes.

Every watch event goes to the controller, which caches it and enqueues the
key; reconciliation, finalizers and status writes are the controller's. kopf
writes nothing to our objects (no changing handlers: no kopf finalizer, no
progress or last-handled annotations).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import kopf
from kopf._cogs.clients import errors as kopf_errors
from kopf._cogs.clients import watching as kopf_watching
from kopf._core.reactor.inventory import ResourceMemories, ResourceMemory

from agentexec.controller import Controller
from agentexec.kube import (
    AGENT_PLURAL,
    APPROVAL_PLURAL,
    GROUP,
    LIST_CHUNK,
    PLURAL,
    POLICY_PLURAL,
    VERSION,
)

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
    # The first listing and every re-listing after a 410 Gone, in pages
    # (kopf's default is one unchunked LIST of every object).
    settings.watching.chunk_size = LIST_CHUNK
    # kopf runs one worker task per object, which holds the object's last
    # event until it has idled this long: a listing of 100 000 objects held
    # every one seen in the last 5 s (kopf's default), each with its full
    # body. Our handler only caches and enqueues; a new worker is cheap.
    settings.queueing.idle_timeout = 0.5
    settings.persistence.diffbase_storage = NoDiffBase()
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


class NoDiffBase(kopf.DiffBaseStorage):
    """No last-handled state: kopf computes it for changing handlers only
    (the operator has none), yet builds it for every event it processes, a
    deep copy of the whole object (a 4 KB output and managedFields
    included): about a sixth of the operator's CPU in a listing of 20 000
    executions."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class Unremembered(ResourceMemories):
    """kopf's per-object memories, not kept.

    kopf remembers ~1.5 KB for every object it has seen (a memo, an error
    throttler, index and daemon state, a patch left to apply) until the
    object is deleted: 150 MB for 100 000 executions kept. The operator has
    event handlers only (no daemons, timers, indexes or changing handlers,
    and kopf writes nothing), for which that state is never read again, so
    each event gets a fresh one: the path kopf itself takes for admission
    requests (``ephemeral``).
    """

    async def recall(
        self,
        raw_body: kopf.RawBody,
        *,
        memobase: Any = None,
        noticed_by_listing: bool = False,
        ephemeral: bool = False,
    ) -> ResourceMemory:
        return await super().recall(
            raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True
        )


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
    # ExecutionPolicies: cached, and the executions of their namespace that
    # have not started enqueued. Their status (the budget's spending) is
    # written by the reconcile that finishes an execution.
    controller: Controller = memo.controller
    raw = event.get("object")
    controller.on_policy_event(event.get("type"), raw if isinstance(raw, dict) else dict(body))


# Whose complete listings replace what the controller holds.
LISTED_PLURALS = (PLURAL, AGENT_PLURAL, APPROVAL_PLURAL, POLICY_PLURAL)
Listed = Callable[[str, "str | None", dict[tuple[str, str], str]], None]


def hook_listings(on_listed: Listed) -> Callable[[], None]:
    """Tell ``on_listed(plural, namespace, {key: uid})`` when a listing of our
    resources is complete; returns the function that undoes the hook.

    kopf 1.45 (``_cogs/clients/watching.py``) lists before it watches, and
    lists again whenever a watch ends with 410 Gone (the resourceVersion was
    compacted away, e.g. after an API server outage). Each listing's objects
    reach handlers as type-None events, and the end of the listing is a
    ``Bookmark.LISTED`` that kopf keeps to itself; objects deleted while no
    watch ran get no DELETED event at all. Wrapping ``continuous_watch`` (one
    call per listing) sees both, so a re-listing replaces our caches instead
    of merging into them. kopf has no public hook for this; a test checks the
    wrapper still sees the marker (tests/unit/test_listing_hook.py).
    """
    original = kopf_watching.continuous_watch

    async def continuous_watch(**kwargs: Any) -> AsyncIterator[Any]:
        resource, namespace = kwargs["resource"], kwargs["namespace"]
        ours = resource.group == GROUP and resource.plural in LISTED_PLURALS
        listed: dict[tuple[str, str], str] | None = {} if ours else None
        listing = True
        try:
            async for item in original(**kwargs):
                if item is kopf_watching.Bookmark.LISTED:
                    listing = False
                if listed is not None:
                    if item is kopf_watching.Bookmark.LISTED:
                        on_listed(resource.plural, namespace, listed)
                        listed = None
                    elif isinstance(item, dict) and item.get("type") is None:
                        meta = (item.get("object") or {}).get("metadata") or {}
                        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
                        listed[key] = str(meta.get("uid", ""))
                yield item
        except kopf_errors.APIClientError as exc:
            # A paged listing that outlived its continue token (the API
            # server compacts every 5 minutes): 410 Gone, which kopf takes
            # for a fatal error and stops the operator. List again instead,
            # as kopf does after a 410 on a watch; this listing was never
            # reported complete, so nothing is replaced by half of it.
            if not listing or exc.status != 410:
                raise
            log.warning(
                "a paged listing outlived its continue token; listing again",
                extra={"resource": resource.plural, "namespace": namespace or "(cluster)"},
            )

    kopf_watching.continuous_watch = continuous_watch

    def undo() -> None:
        kopf_watching.continuous_watch = original

    return undo
