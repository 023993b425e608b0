"""kopf handlers: thin. They observe, hand over to the Reconciler (which asks
the pure planner), and turn its outcome into kopf's retry semantics."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import kopf

from agentexec.executions import Reconciler
from agentexec.kube import GROUP, PLURAL, VERSION
from agentexec.metrics import Metrics
from agentexec.settings import Settings
from agentexec.temporal.manager import TemporalUnavailable

FINALIZER = "agentexec.io/cancel-workflow"
FORCE_DELETE = "agentexec.io/force-delete"

registry = kopf.OperatorRegistry()


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled configuration, stored as a digest.

    kopf keeps the whole essence (spec, labels, annotations) in one annotation;
    with a 256 KiB message or large labels that annotation alone would pass
    the API server's 256 KiB limit and every kopf patch would fail. We have no
    update handlers (the spec is immutable), so a digest is all kopf needs to
    tell "changed" from "same".
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        blob = json.dumps(essence, sort_keys=True, default=str).encode()
        return {"spec": {"digest": hashlib.sha256(blob).hexdigest()}}


log = logging.getLogger("agentexec.handlers")


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the current kubeconfig."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
        **kwargs
    ) or kopf.login_with_kubeconfig(**kwargs)
    return info


@kopf.on.startup(registry=registry)
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf; never touches Temporal (startup handlers block all watching)."""
    ours: Settings = memo.settings
    settings.persistence.finalizer = FINALIZER
    # Our CRD prunes unknown status fields: keep kopf's bookkeeping in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="agentexec.io")
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(
        prefix="agentexec.io", key="last-handled-configuration"
    )
    settings.posting.reporting_component = "agentexec-operator"
    settings.posting.level = logging.WARNING
    # kopf #996/#1276: a watch can stall silently; bound every watch request
    # so a dead connection is replaced within minutes, not never.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.peering.name = ours.peering or "agentexec-operator"
    settings.peering.standalone = ours.peering is None
    settings.peering.clusterwide = not ours.watch_namespaces
    # A SIGKILLed leader is presumed alive until its record expires: keep that
    # short so a standby takes over within ~20 s (kopf's default is 60 s).
    settings.peering.lifetime = 15


@asynccontextmanager
async def timed(metrics: Metrics, handler: str) -> AsyncIterator[None]:
    started = time.monotonic()
    try:
        yield
    except (kopf.TemporaryError, kopf.PermanentError):
        raise
    except Exception:
        metrics.reconcile_errors.labels(handler=handler).inc()
        raise
    finally:
        metrics.reconcile_duration.labels(handler=handler).observe(time.monotonic() - started)


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def observe(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # async on purpose: kopf runs sync handlers in a thread pool, and this one
    # runs for every watch event.
    reconciler: Reconciler = memo.reconciler
    reconciler.observe(body, deleted=event.get("type") == "DELETED")


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    reconciler: Reconciler = memo.reconciler
    async with timed(reconciler.metrics, "reconcile"):
        outcome = await reconciler.reconcile(body)
    logger.info(f"reconciled: {outcome}")


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
async def cancel(
    body: kopf.Body, memo: kopf.Memo, retry: int, logger: kopf.Logger, **_: Any
) -> None:
    reconciler: Reconciler = memo.reconciler
    if body.metadata.annotations.get(FORCE_DELETE) == "true":
        message = (
            f"{FORCE_DELETE}=true: finalizer removed without cancelling the workflow; "
            "it may still run in Temporal"
        )
        logger.warning(message)
        await reconciler.kube.post_event(body, "Warning", "ForceDeleted", message)
        return
    async with timed(reconciler.metrics, "delete"):
        try:
            outcome = await reconciler.cancel(body)
        except TemporalUnavailable as exc:
            # Waits for Temporal: the workflow must not outlive its resource.
            # The force-delete annotation is the documented way out.
            raise kopf.TemporaryError(
                f"cannot cancel the workflow yet ({exc.message}); retrying. "
                f"Annotate {FORCE_DELETE}=true to remove it anyway.",
                delay=min(2.0 ** min(retry, 3), 10.0),
            ) from exc
    logger.info(f"workflow {outcome}")
