"""The Kubernetes calls the operator makes besides kopf's own: status writes
checked against resourceVersion, reads, and events."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "agentexec.io", "v1alpha1", "agentexecutions"
KIND = "AgentExecution"
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "agentexec-operator"

log = logging.getLogger("agentexec.kube")
Plan = Callable[[dict[str, Any]], dict[str, Any] | None]


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    @classmethod
    async def connect(cls) -> Kube:
        """In a pod: its service account; elsewhere: the current kubeconfig."""
        try:
            config.load_incluster_config()
            api = client.ApiClient()
        except config.ConfigException:
            api = await config.new_client_from_config()
        return cls(api)

    async def close(self) -> None:
        await self.api.close()

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    async def patch_status(
        self,
        namespace: str,
        name: str,
        plan: Plan,
        *,
        uid: str | None = None,
        body: dict[str, Any] | None = None,
        attempts: int = 8,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Read, plan, write; on a conflict read again and re-plan.

        The patch carries the resourceVersion it was planned from, so a write
        never overwrites a status it did not see (no lost condition updates).
        Returns (the object as written or last read, the patch applied or
        None); (None, None) when the object is gone or is another UID.
        """
        for attempt in range(attempts):
            current = (
                body if (body is not None and attempt == 0) else await self.get(namespace, name)
            )
            if current is None or (uid is not None and current["metadata"].get("uid") != uid):
                return None, None
            patch = plan(current)
            status = current.get("status") or {}
            if patch is None or all(status.get(k) == v for k, v in patch.items()):
                return current, None  # nothing would change: no write, no event
            try:
                written: dict[str, Any] = await self.custom.patch_namespaced_custom_object_status(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {
                        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                        "status": patch,
                    },
                    _content_type=MERGE_PATCH,
                )
            except ApiException as exc:
                if exc.status == 409:
                    continue
                if exc.status == 404:
                    return None, None
                raise
            return written, patch
        raise RuntimeError(
            f"status of {namespace}/{name}: still conflicting after {attempts} tries"
        )

    async def post_event(
        self, body: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """A Kubernetes Event on the execution; failures are logged, never raised."""
        meta = body.get("metadata", {})
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{meta.get('name', 'aex')[:200]}.{uuid.uuid4().hex[:12]}",
                namespace=meta.get("namespace"),
            ),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=KIND,
                name=meta.get("name"),
                namespace=meta.get("namespace"),
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            type=event_type,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT,
        )
        try:
            await asyncio.wait_for(
                self.core.create_namespaced_event(meta.get("namespace"), event), 10
            )
        except Exception as exc:
            log.warning(
                "could not post event",
                extra={"reason": reason, "object": meta.get("name"), "error": str(exc)[:200]},
            )
