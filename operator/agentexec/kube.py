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
import hashlib
import json
import logging
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf
import yaml

GROUP, VERSION, PLURAL = "agentexec.io", "v1alpha1", "agentexecutions"
AGENT_PLURAL = "agents"
POLICY_PLURAL = "executionpolicies"
APPROVAL_PLURAL = "agentapprovals"
KIND = "AgentExecution"
MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "agentexec-operator"
# Objects per LIST page (ours and kopf's): with 100 000 executions one
# unchunked LIST is a response of hundreds of MB, parsed all at once.
LIST_CHUNK = 500

log = logging.getLogger("agentexec.kube")


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


# Where kopf.login_with_service_account reads the pod's token. Projected tokens
# rotate (kubelet refreshes the file at 80% of their life, 1 h by default).
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class NoCredentials(RuntimeError):
    """No Kubernetes credentials can be found: said in one line, never a traceback."""


def login() -> kopf.ConnectionInfo:
    """The same credentials kopf's login handler uses."""
    kwargs: dict[str, Any] = {"settings": kopf.OperatorSettings(), "logger": log}
    try:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    except (
        OSError, ValueError, LookupError, TypeError, AttributeError, yaml.YAMLError,
        kopf.LoginError,
    ) as exc:  # fmt: skip
        # A kubeconfig that is missing, unreadable or names a context it lacks.
        raise NoCredentials(
            f"no usable Kubernetes credentials: the kubeconfig cannot be used "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if info is None:
        raise NoCredentials(
            "no Kubernetes credentials: not in a pod (no service account token at "
            f"{SERVICE_ACCOUNT_TOKEN}) and no kubeconfig (KUBECONFIG unset, no ~/.kube/config)"
        )
    return info


def describe_credentials(info: kopf.ConnectionInfo) -> str:
    """Where the credentials point, for --check-config (never a token)."""
    how = "service account" if _token_file(info) is not None else "kubeconfig"
    return f"{info.server} ({how})"


class Credentials:
    """The Authorization header, kept current as kopf keeps its own.

    A token file is re-read when it changes (checked at most every
    ``check_every`` seconds, and at once after a 401); without one, a 401 logs
    in again through kopf's login functions (a kubeconfig rewritten by a tool).
    """

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        token_file: Path | None = None,
        relogin: Callable[[], kopf.ConnectionInfo] | None = login,
        check_every: float = 1.0,
    ) -> None:
        self.token_file, self.relogin, self.check_every = token_file, relogin, check_every
        self._header = _authorization(info)
        self._file_seen: tuple[int, int, int] | None = None
        self._checked = 0.0
        if token_file is not None:
            self._read_file()

    def header(self) -> str | None:
        if self.token_file is not None and time.monotonic() - self._checked >= self.check_every:
            self._read_file()
        return self._header

    async def refresh(self, rejected: str | None) -> bool:
        """After a 401 with ``rejected``: True when there is a different header to try."""
        if self.token_file is not None:
            self._read_file(force=True)
        elif self.relogin is not None:
            try:
                info = await asyncio.to_thread(self.relogin)
            except Exception as exc:
                log.warning("Kubernetes re-login failed", extra={"error": str(exc)[:200]})
                return False
            self._header = _authorization(info)
        changed = self._header is not None and self._header != rejected
        log.warning(
            "Kubernetes credentials rejected (401)",
            extra={"retrying_with_new_credentials": changed},
        )
        return changed

    def _read_file(self, force: bool = False) -> None:
        assert self.token_file is not None
        self._checked = time.monotonic()
        try:
            st = self.token_file.stat()  # follows kubelet's ..data symlink swap
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen == self._file_seen and not force:
                return
            token = self.token_file.read_text().strip()
        except OSError as exc:
            log.warning("cannot read the token file", extra={"error": str(exc)[:200]})
            return
        if token:
            if self._file_seen is not None and f"Bearer {token}" != self._header:
                log.info("Kubernetes token file changed; using the new token")
            self._header, self._file_seen = f"Bearer {token}", seen


def _token_file(info: kopf.ConnectionInfo) -> Path | None:
    """In a pod, kopf read the token from the projected file: follow its rotation."""
    in_pod = info.token is not None and info.server == "https://kubernetes.default.svc"
    return SERVICE_ACCOUNT_TOKEN if in_pod and SERVICE_ACCOUNT_TOKEN.exists() else None


def _authorization(info: kopf.ConnectionInfo) -> str | None:
    if info.token:
        return f"{info.scheme or 'Bearer'} {info.token}"
    if info.username and info.password:
        basic = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
        return f"Basic {basic}"
    return None


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
    def __init__(self, info: kopf.ConnectionInfo, credentials: Credentials | None = None) -> None:
        self.server = info.server.rstrip("/")
        self.credentials = credentials or Credentials(info)
        headers = {"Accept": "application/json", "User-Agent": COMPONENT}
        self.session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=64),
            timeout=aiohttp.ClientTimeout(total=30, sock_connect=10),
        )

    @classmethod
    async def connect(cls) -> Kube:
        info = login()
        return cls(info, Credentials(info, _token_file(info)))

    def _auth(self, headers: dict[str, str] | None = None) -> dict[str, str]:
        header = self.credentials.header()
        return {**(headers or {}), **({"Authorization": header} if header else {})}

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else None
        status, text = await self._send(method, path, data, headers)
        if status >= 400:
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise KubeError(status, str(message)[:500])
        result: dict[str, Any] = json.loads(text) if text else {}
        return result

    async def _send(
        self, method: str, path: str, data: str | None, headers: dict[str, str] | None
    ) -> tuple[int, str]:
        """One request; after a 401, once more if the credentials have changed since."""
        for first in (True, False):
            auth = self._auth(headers)
            async with self.session.request(
                method, self.server + path, data=data, headers=auth
            ) as resp:
                if (
                    resp.status == 401
                    and first
                    and await self.credentials.refresh(auth.get("Authorization"))
                ):
                    continue
                return resp.status, await resp.text()
        raise AssertionError("unreachable")

    async def watch(self, path: str) -> AsyncIterator[dict[str, Any]]:
        """Watch events of a collection path (used by the benchmarks)."""
        async with self.session.get(
            self.server + path,
            params={"watch": "1"},
            headers=self._auth(),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as resp:
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)

    @staticmethod
    def path(namespace: str, name: str = "", subresource: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return "/".join(p for p in (path, name, subresource) if p)

    async def list_agents(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """The Agents of one namespace, or of the cluster."""
        scope = f"/namespaces/{namespace}" if namespace else ""
        path = f"/apis/{GROUP}/{VERSION}{scope}/{AGENT_PLURAL}?limit={LIST_CHUNK}"
        agents: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await self.request("GET", path + (f"&continue={quote(token)}" if token else ""))
            items = page.get("items")
            if isinstance(items, list):
                agents += [i for i in items if isinstance(i, dict)]
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return agents

    async def get_agent(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Agent, or None where there is none."""
        try:
            return await self.request(
                "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{AGENT_PLURAL}/{name}"
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    @staticmethod
    def policy_path(namespace: str, name: str = "", subresource: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{POLICY_PLURAL}"
        return "/".join(p for p in (path, name, subresource) if p)

    async def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One ExecutionPolicy, or None where there is none."""
        try:
            return await self.request("GET", self.policy_path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def write_policy_status(
        self, namespace: str, name: str, resource_version: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge ``status`` into an ExecutionPolicy's status (its budget's
        spending), only if it is still at ``resource_version`` (409 otherwise)."""
        return await self.request(
            "PATCH",
            self.policy_path(namespace, name, "status"),
            {"metadata": {"resourceVersion": resource_version}, "status": dict(status)},
            MERGE_PATCH,
        )

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

    async def write_approval_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge ``status`` into an AgentApproval's status (the operator is its only writer)."""
        return await self.request(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{APPROVAL_PLURAL}/{name}/status",
            {"status": dict(status)},
            MERGE_PATCH,
        )

    async def delete(
        self, namespace: str, name: str, uid: str, resource_version: str | None = None
    ) -> bool:
        """Delete the execution only if it is still the object with ``uid``
        and, when given, still at ``resource_version`` (raises KubeError 409
        for a re-created one of the same name, or one changed since it was
        read). Returns False when it was already gone."""
        preconditions = {"uid": uid}
        if resource_version is not None:
            preconditions["resourceVersion"] = resource_version
        try:
            await self.request(
                "DELETE",
                self.path(namespace, name),
                {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions},
            )
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

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

    async def create_token_review(self, token: str) -> dict[str, Any]:
        """Who ``token`` is, as the API server says (TokenReview status)."""
        review = await self.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
             "spec": {"token": token}},
        )  # fmt: skip
        status = review.get("status")
        return status if isinstance(status, dict) else {}

    async def create_access_review(
        self, user: Mapping[str, Any], verb: str, path: str
    ) -> dict[str, Any]:
        """May ``user`` (a TokenReview's status.user) ``verb`` the non-resource
        URL ``path`` (SubjectAccessReview status)."""
        spec: dict[str, Any] = {
            "user": user.get("username", ""),
            "groups": user.get("groups") or [],
            "nonResourceAttributes": {"path": path, "verb": verb},
        }
        if user.get("uid"):
            spec["uid"] = user["uid"]
        if user.get("extra"):
            spec["extra"] = user["extra"]
        review = await self.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
             "spec": spec},
        )  # fmt: skip
        status = review.get("status")
        return status if isinstance(status, dict) else {}

    @staticmethod
    def lease_path(namespace: str, name: str = "") -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        return f"{path}/{name}" if name else path


class TokenAuthorizer:
    """Who may read /metrics and /statusz: a bearer token the API server
    authenticates (TokenReview) and authorizes for `get` on the path
    (SubjectAccessReview), as controller-runtime's secure metrics filter does.

    Answers are cached ``ttl`` seconds per token and path (a hash of the
    token, never the token), as the API server's own webhook authenticator and
    authorizer cache theirs: a scrape every 30 s costs two reviews a minute or
    fewer. Failures to reach the API server are not cached.
    """

    def __init__(self, kube: Kube, ttl: float = 10.0, max_entries: int = 1024) -> None:
        self.kube, self.ttl, self.max_entries = kube, ttl, max_entries
        self._cache: dict[tuple[str, str], tuple[float, tuple[int, str]]] = {}

    async def __call__(self, token: str, path: str) -> tuple[int, str]:
        key = (hashlib.sha256(token.encode()).hexdigest(), path)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self._review(token, path)
        except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot review a metrics token", extra={"error": str(exc)[:200]})
            return 503, "the API server cannot check the token now"
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[key] = (now + self.ttl, answer)
        return answer

    async def _review(self, token: str, path: str) -> tuple[int, str]:
        who = await self.kube.create_token_review(token)
        user = who.get("user")
        if not who.get("authenticated") or not isinstance(user, dict):
            return 401, "the token is not valid"
        allowed = await self.kube.create_access_review(user, "get", path)
        if not allowed.get("allowed"):
            name = user.get("username", "?")
            return 403, f"{name} may not get {path}"
        return 200, "allowed"
