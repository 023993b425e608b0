"""How the server is asked whether it serves our namespace: the RPCs of one
probe, and a plain TCP dial. What an answer means for the connection state
is the connection's (and temporal/state.py's) to decide.

The probe asks about our namespace (DescribeNamespace), not the server-wide
health check alone: Temporal Cloud refuses that one to namespace-scoped API
keys (temporal-worker-controller issue #225), and it cannot tell that the
namespace is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import NamespaceState
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    DescribeWorkflowExecutionRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from agentexec.settings import TemporalSettings
from agentexec.temporal.errors import (
    HEALTH_REFUSED_CODES,
    ProbeRefused,
    describe_error,
    is_namespace_not_found,
    is_workflow_not_found,
)
from agentexec.temporal.state import NAMESPACE_NOT_FOUND

log = logging.getLogger("agentexec.temporal")

OK = "ok"
# Asked for through the namespace cache, to see the namespace as every other
# call will.
_PROBE_WORKFLOW_ID = "agentexec-namespace-probe"


class Probe:
    def __init__(self, settings: TemporalSettings, log_fields: dict[str, str]) -> None:
        self.settings = settings
        self.log_fields = log_fields
        # Set when a call saw our namespace missing: the next probe asks the
        # way that call did (through the frontend's namespace cache).
        self.doubt_namespace = False
        self._health_refused_by: Client | None = None
        host, _, port = settings.address.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)

    async def ask(self, client: Client, *, through_cache: bool = False) -> str:
        """One probe: DescribeNamespace, and the health check where the server allows it.

        Returns OK or NAMESPACE_NOT_FOUND; raises what says the server is
        not usable. Both RPCs run at once under one hard deadline (the SDK's
        per-call timeout does not bound a frozen connection). With
        ``through_cache`` (on the way up) or a doubted namespace, one more
        call checks the namespace through the frontend's cache.
        """
        timeout = self.settings.probe_timeout
        per_call = timedelta(seconds=timeout)
        asks: list[Awaitable[Any]] = [
            client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=self.settings.namespace),
                retry=False,
                timeout=per_call,
            )
        ]
        # The health check adds what DescribeNamespace cannot see: a frontend
        # that is draining answers NOT_SERVING while it still serves calls.
        if self._health_refused_by is not client:
            asks.append(client.service_client.check_health(timeout=per_call))
        async with asyncio.timeout(timeout + 0.25):
            described, *rest = await asyncio.gather(*asks, return_exceptions=True)
        health = rest[0] if rest else True
        if isinstance(health, RPCError) and health.status in HEALTH_REFUSED_CODES:
            self._health_refused_by = client
            log.info(
                "the server refuses the health check to this client; probing the namespace only",
                extra={**self.log_fields, "error": describe_error(health)},
            )
            health = True
        # NOT_FOUND to DescribeNamespace is about the one thing it names.
        if isinstance(described, RPCError) and described.status == RPCStatusCode.NOT_FOUND:
            if health is True:
                return NAMESPACE_NOT_FOUND
        elif isinstance(described, BaseException):
            raise described
        elif described.namespace_info.state == NamespaceState.NAMESPACE_STATE_DELETED:
            return NAMESPACE_NOT_FOUND
        if isinstance(health, BaseException):
            raise health
        if health is not True:
            raise ProbeRefused("the frontend's health check answered NOT_SERVING")
        if through_cache or self.doubt_namespace:
            self.doubt_namespace = False
            return await self._ask_through_namespace_cache(client)
        return OK

    async def _ask_through_namespace_cache(self, client: Client) -> str:
        """Whether calls other than DescribeNamespace see the namespace too.

        DescribeNamespace reads the database; every other call goes through
        the frontend's namespace cache, which learns of a new namespace up to
        its refresh interval later (measured ~1 s on the dev server; 10 s by
        default), answering NOT_FOUND meanwhile. So, before saying connected,
        one call through that cache: a workflow that does not exist.
        """
        timeout = self.settings.probe_timeout
        request = DescribeWorkflowExecutionRequest(
            namespace=self.settings.namespace,
            execution=WorkflowExecution(workflow_id=_PROBE_WORKFLOW_ID),
        )
        try:
            async with asyncio.timeout(timeout + 0.25):
                await client.workflow_service.describe_workflow_execution(
                    request, retry=False, timeout=timedelta(seconds=timeout)
                )
        except RPCError as exc:
            if is_namespace_not_found(exc, self.settings.namespace):
                return NAMESPACE_NOT_FOUND
            if not is_workflow_not_found(exc):  # the workflow missing, as expected
                raise
        return OK

    async def tcp_reachable(self) -> bool:
        """Whether the server's port accepts a plain TCP dial (within the probe timeout)."""
        try:
            async with asyncio.timeout(self.settings.probe_timeout):
                _, writer = await asyncio.open_connection(self._host, self._port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True
