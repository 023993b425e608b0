"""The operator's Kubernetes client: agentexec/kube.py (aiohttp, kopf's
credentials) against the official asyncio client, kubernetes_asyncio, on
what decides between them (issue #20): resident memory, requests and time
per execution's calls, and a rotated service-account token.

kubernetes_asyncio is installed for this run only (pip --target into
.cache/tools), never into the venv the operator runs from: kopf imports it
when it is importable. Each figure comes from a real API server (etcd +
kube-apiserver, localenv.kube) in this run.

- RSS: a fresh interpreter with kopf imported (what the operator has anyway),
  then the client imported, configured and one GET made; VmRSS after.
- calls: the calls reconcile makes for one execution (get, status write with
  its resourceVersion precondition, finalizer write, an event, delete with
  preconditions), N times each way; requests counted by the API server
  (apiserver_request_total), time per sequence.
- token: a client reading a token file (as in a pod); the file gets a new
  token and the old one is revoked (its bound Secret deleted): how long, and
  how many 401s, until the client's calls pass again.

Usage: python bench/operator_client.py [--executions N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localenv.binaries import CACHE_DIR, ROOT
from localenv.kube import ControlPlane

KUBERNETES_ASYNCIO = "kubernetes_asyncio==36.1.0"
TOOLS = CACHE_DIR / "tools" / "kubernetes-asyncio-36.1.0"
NS = "bench"
GROUP, VERSION, PLURAL = "agentexec.io", "v1alpha1", "agentexecutions"
# kubernetes_asyncio sends a dict body as a JSON patch unless told.
MERGE_PATCH = "application/merge-patch+json"


def install_kubernetes_asyncio() -> Path:
    """Into .cache/tools, importable by this process only (sys.path)."""
    if not (TOOLS / "kubernetes_asyncio").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(TOOLS),
             KUBERNETES_ASYNCIO],
            check=True,
        )  # fmt: skip
    if str(TOOLS) not in sys.path:
        sys.path.append(str(TOOLS))  # after the venv: its own packages win
    return TOOLS


RSS_PROGRAM = """
import asyncio, json, os, sys
import kopf, aiohttp
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
base = rss()
async def kube_py():
    from agentexec import kube
    k = kube.Kube(kube.login())
    await k.get("bench", "hello-echo")
    await k.close()
async def kubernetes_asyncio():
    from kubernetes_asyncio import client, config
    await config.load_kube_config(os.environ["KUBECONFIG"])
    async with client.ApiClient() as api:
        await client.CustomObjectsApi(api).get_namespaced_custom_object(
            "agentexec.io", "v1alpha1", "bench", "agentexecutions", "hello-echo")
if sys.argv[1] != "none":
    asyncio.run(globals()[sys.argv[1]]())
print(json.dumps({"base": base, "after": rss()}))
"""


def rss(which: str, kubeconfig: Path) -> dict[str, float]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    if which == "kubernetes_asyncio":
        env["PYTHONPATH"] = str(TOOLS)
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROGRAM, which], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def execution(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentExecution",
        "metadata": {"name": name},
        "spec": {"agent": "echo", "message": name},
    }


def event(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}."},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "AgentExecution",
            "name": name,
            "namespace": NS,
            "uid": uid,
        },
        "reason": "Bench",
        "message": "bench",
        "type": "Normal",
        "source": {"component": "bench"},
    }


async def calls_kube_py(names: list[str]) -> float:
    from agentexec import kube

    k = kube.Kube(kube.login())
    started = time.perf_counter()
    for name in names:
        obj = await k.get(NS, name)
        assert obj is not None
        rv, uid = obj["metadata"]["resourceVersion"], obj["metadata"]["uid"]
        obj = await k.write_status(NS, name, rv, {"phase": "Running"})
        obj = await k.write_finalizers(NS, name, obj["metadata"]["resourceVersion"], [])
        await k.create_event(NS, event(name, uid))
        await k.delete(NS, name, uid, obj["metadata"]["resourceVersion"])
    elapsed = time.perf_counter() - started
    await k.close()
    return elapsed


async def calls_kubernetes_asyncio(names: list[str], kubeconfig: Path) -> float:
    from kubernetes_asyncio import client, config

    await config.load_kube_config(str(kubeconfig))
    async with client.ApiClient() as api:
        objs, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        started = time.perf_counter()
        for name in names:
            obj = await objs.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
            rv, uid = obj["metadata"]["resourceVersion"], obj["metadata"]["uid"]
            obj = await objs.patch_namespaced_custom_object_status(
                GROUP, VERSION, NS, PLURAL, name,
                {"metadata": {"resourceVersion": rv}, "status": {"phase": "Running"}},
                _content_type=MERGE_PATCH,
            )  # fmt: skip
            rv = obj["metadata"]["resourceVersion"]
            obj = await objs.patch_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, name,
                {"metadata": {"resourceVersion": rv, "finalizers": []}},
                _content_type=MERGE_PATCH,
            )  # fmt: skip
            await core.create_namespaced_event(NS, event(name, uid))
            await objs.delete_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, name,
                body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(
                        uid=uid, resource_version=obj["metadata"]["resourceVersion"]
                    )
                ),
            )  # fmt: skip
        return time.perf_counter() - started


def requests_made(plane: ControlPlane) -> float:
    return sum(
        value
        for resource in ("agentexecutions", "events")
        for key, value in plane.request_counts(resource).items()
        if not key.startswith("code=")
    )


def measure_calls(plane: ControlPlane, kubeconfig: Path, executions: int) -> dict[str, Any]:
    objs = k8s.CustomObjectsApi(plane.api)
    out: dict[str, Any] = {}
    for which in ("kube.py", "kubernetes_asyncio"):
        names = [f"{which.replace('.', '-').replace('_', '-')}-{i}" for i in range(executions)]
        for name in names:
            objs.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, execution(name))
        before = requests_made(plane)
        if which == "kube.py":
            elapsed = asyncio.run(calls_kube_py(names))
        else:
            elapsed = asyncio.run(calls_kubernetes_asyncio(names, kubeconfig))
        out[which] = {
            "requests": (requests_made(plane) - before) / executions,
            "ms": elapsed / executions * 1000,
        }
    return out


def bound_token(plane: ControlPlane, secret: str) -> str:
    core = k8s.CoreV1Api(plane.api)
    made = core.create_namespaced_secret(
        NS, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=secret), string_data={"k": "v"})
    )
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(
            audiences=[],
            expiration_seconds=3600,
            bound_object_ref=k8s.V1BoundObjectReference(
                api_version="v1", kind="Secret", name=secret, uid=made.metadata.uid
            ),
        )
    )
    token: str = core.create_namespaced_service_account_token("reader", NS, request).status.token
    return token


async def recovery(client_get: Any, stop_after: float = 90.0) -> tuple[float, int]:
    """Seconds until a GET passes again, and how many were refused first."""
    started, refused = time.monotonic(), 0
    while time.monotonic() - started < stop_after:
        if await client_get():
            return time.monotonic() - started, refused
        refused += 1
        await asyncio.sleep(0.5)
    return float("inf"), refused


async def token_rotation(plane: ControlPlane, workdir: Path) -> dict[str, tuple[float, int]]:
    import kopf
    from kubernetes_asyncio import client as aclient
    from kubernetes_asyncio.client.exceptions import ApiException
    from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

    from agentexec import kube

    core = k8s.CoreV1Api(plane.api)
    core.create_namespaced_service_account(NS, k8s.V1ServiceAccount(metadata={"name": "reader"}))
    rbac = k8s.RbacAuthorizationV1Api(plane.api)
    rbac.create_namespaced_role(NS, {
        "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get"]}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(NS, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": NS}],
    })  # fmt: skip
    k8s.CustomObjectsApi(plane.api).create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, execution("rotated")
    )
    token_file = workdir / "token"
    token_file.write_text(bound_token(plane, "anchor-a"))

    first = token_file.read_text()
    info = kopf.ConnectionInfo(server=plane.url, ca_path=str(plane.ca_path), token=first)
    ours = kube.Kube(info, kube.Credentials(info, token_file=token_file, relogin=None))

    async def ours_get() -> bool:
        try:
            return await ours.get(NS, "rotated") is not None
        except kube.KubeError:
            return False

    config = aclient.Configuration()
    host, port = plane.url.removeprefix("https://").split(":")
    loader = InClusterConfigLoader(
        token_filename=str(token_file),
        cert_filename=str(plane.ca_path),
        try_refresh_token=True,
        environ={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
    )
    loader.load_and_set(config)
    theirs = aclient.ApiClient(configuration=config)
    objs = aclient.CustomObjectsApi(theirs)

    async def theirs_get() -> bool:
        try:
            await objs.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "rotated")
        except ApiException:
            return False
        return True

    assert await ours_get(), "kube.py does not work on the first token"
    assert await theirs_get(), "kubernetes_asyncio does not work on the first token"
    token_file.write_text(bound_token(plane, "anchor-b"))
    core.delete_namespaced_secret("anchor-a", NS)
    # The old token is refused once the API server sees its Secret gone.
    old = k8s.ApiClient(k8s.Configuration(host=plane.url, ssl_ca_cert=str(plane.ca_path)))
    while True:
        try:
            k8s.CustomObjectsApi(old).get_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, "rotated",
                _headers={"Authorization": f"Bearer {first}"},
            )  # fmt: skip
            await asyncio.sleep(0.2)
        except k8s.ApiException:
            break
    results = {
        "kube.py": await recovery(ours_get),
        "kubernetes_asyncio": await recovery(theirs_get),
    }
    await ours.close()
    await theirs.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executions", type=int, default=50)
    args = parser.parse_args()
    install_kubernetes_asyncio()
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        work = Path(tmp)
        plane = ControlPlane(work / "kube")
        plane.start()
        # kube.login() finds the kubeconfig as kopf does.
        os.environ["KUBECONFIG"] = str(plane.kubeconfig)
        try:
            plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            plane.kubectl("wait", "--for=condition=Established", "crd/agentexecutions.agentexec.io")
            plane.kubectl("create", "namespace", NS)
            plane.kubectl("apply", "-n", NS, "-f", str(ROOT / "examples" / "echo.yaml"))
            variants = ("none", "kube_py", "kubernetes_asyncio")
            memory = {w: rss(w, plane.kubeconfig) for w in variants}
            calls = measure_calls(plane, plane.kubeconfig, args.executions)
            tokens = asyncio.run(token_rotation(plane, work))
        finally:
            plane.stop()
    base = memory["none"]["after"]
    print("resident memory (MB), kopf imported first:")
    for which in ("kube_py", "kubernetes_asyncio"):
        extra = memory[which]["after"] - base
        after = memory[which]["after"]
        print(f"  {which:20} {after:6.1f} (+{extra:5.1f} over kopf alone, {base:.1f})")
    ours, theirs = calls["kube.py"], calls["kubernetes_asyncio"]
    print(
        f"one execution's calls (get, status, finalizers, event, delete), {args.executions} runs:"
    )
    for which, figures in calls.items():
        print(f"  {which:20} {figures['requests']:4.1f} requests  {figures['ms']:6.1f} ms")
    print(f"  ratio kubernetes_asyncio/kube.py time {theirs['ms'] / ours['ms']:.2f}")
    print("token file rotated and the old token revoked: until calls pass again")
    for which, (seconds, refused) in tokens.items():
        print(f"  {which:20} {seconds:6.1f} s, {refused} calls refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
