"""kopf handlers: thin. They observe, ask a pure planner, act, and patch status."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from agentexec.settings import Settings

GROUP, VERSION, PLURAL = "agentexec.io", "v1alpha1", "agentexecutions"
FINALIZER = "agentexec.io/cancel-workflow"

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
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Tune kopf; never touches Temporal (startup handlers block all watching)."""
    ours: Settings = memo.settings
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
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
