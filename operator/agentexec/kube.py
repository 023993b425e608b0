"""The Kubernetes calls the operator makes besides kopf's own: status writes
checked against resourceVersion, reads, and events.

A small aiohttp client on the credentials kopf's own login functions find
(service account in a pod, the kubeconfig elsewhere), so the operator has one
notion of "who am I" and carries no generated client (kopf imports
kubernetes_asyncio when it is installed: ~45 MB resident for nothing).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kopf

GROUP, VERSION, PLURAL = "agentexec.io", "v1alpha1", "agentexecutions"
KIND = "AgentExecution"
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "agentexec-operator"

log = logging.getLogger("agentexec.kube")
Plan = Callable[[dict[str, Any]], dict[str, Any] | None]


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def login() -> kopf.ConnectionInfo:
    """The same credentials kopf's login handler uses."""
    kwargs: dict[str, Any] = {"settings": kopf.OperatorSettings(), "logger": log}
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        raise RuntimeError("no Kubernetes credentials: not in a pod and no usable kubeconfig")
    return info


def _data(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    # kubeconfig *-data fields are base64; kopf passes them through as found.
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return raw


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=_data(info.ca_data).decode() if info.ca_data else None,
    )
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:
        # ssl wants files; these live only as long as the context is built.
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            cert_file.write_bytes(_data(info.certificate_data))
            key_file.write_bytes(_data(info.private_key_data))
            ctx.load_cert_chain(str(cert_file), str(key_file))
    elif cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Kube:
    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": COMPONENT}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            basic = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        self.session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=64),
            timeout=aiohttp.ClientTimeout(total=30, sock_connect=10),
        )

    @classmethod
    async def connect(cls) -> Kube:
        return cls(login())

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else None
        async with self.session.request(
            method, self.server + path, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message", text)
                except ValueError:
                    message = text
                raise KubeError(resp.status, str(message)[:500])
            result: dict[str, Any] = json.loads(text) if text else {}
            return result

    async def watch(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events of a collection path (used by the benchmarks)."""
        async with self.session.get(
            self.server + path,
            params={"watch": "1"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as resp:
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)

    @staticmethod
    def path(namespace: str, name: str = "", subresource: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return "/".join(p for p in (path, name, subresource) if p)

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", self.path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

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
                written = await self.request(
                    "PATCH",
                    self.path(namespace, name, "status"),
                    {
                        "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                        "status": patch,
                    },
                    MERGE_PATCH,
                )
            except KubeError as exc:
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
        namespace = meta.get("namespace")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{str(meta.get('name', 'aex'))[:200]}.{uuid.uuid4().hex[:12]}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
        }
        try:
            await asyncio.wait_for(
                self.request("POST", f"/api/v1/namespaces/{namespace}/events", event), 10
            )
        except Exception as exc:
            log.warning(
                "could not post event",
                extra={"reason": reason, "object": meta.get("name"), "error": str(exc)[:200]},
            )
