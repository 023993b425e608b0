"""The Kubernetes calls the operator makes besides kopf's own: status writes
checked against resourceVersion, reads, and events.

A small aiohttp client on the credentials kopf's own login functions find
(service account in a pod, the kubeconfig elsewhere), so the operator has one
notion of "who am I" and carries no generated client (kopf imports
kubernetes_asyncio when it is installed: ~45 MB resident for nothing).
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf

GROUP, VERSION, PLURAL = "agentexec.io", "v1alpha1", "agentexecutions"
KIND = "AgentExecution"
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "agentexec-operator"

log = logging.getLogger("agentexec.kube")


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

    async def write_status(
        self, namespace: str, name: str, resource_version: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge ``status`` into the status subresource, only if the object is
        still at ``resource_version`` (raises KubeError 409 otherwise): a write
        never overwrites a status it did not see. Returns the object as written."""
        return await self.request(
            "PATCH",
            self.path(namespace, name, "status"),
            {"metadata": {"resourceVersion": resource_version}, "status": dict(status)},
            MERGE_PATCH,
        )

    async def write_finalizers(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any]:
        """Set ``metadata.finalizers`` (a merge patch replaces the list: the
        resourceVersion precondition keeps other controllers' entries safe)."""
        return await self.request(
            "PATCH",
            self.path(namespace, name),
            {"metadata": {"resourceVersion": resource_version, "finalizers": finalizers}},
            MERGE_PATCH,
        )

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", f"/api/v1/namespaces/{namespace}/events", event)

    async def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH", f"/api/v1/namespaces/{namespace}/events/{name}", patch, MERGE_PATCH
        )

    @staticmethod
    def lease_path(namespace: str, name: str = "") -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        return f"{path}/{name}" if name else path
