"""What a test pays per API call: a `kubectl` process against the official
client, both reading one AgentExecution from a real API server.

The e2e helpers (tests/e2e/aex.py, the namespace fixture) moved to the
client because their polls call this thousands of times a run.

Usage: python bench/kube_calls.py [--calls N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localenv.binaries import ROOT
from localenv.kube import ControlPlane


def timed(fn: object, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kube-") as tmp:
        plane = ControlPlane(Path(tmp))
        plane.start()
        try:
            plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
            plane.kubectl("wait", "--for=condition=Established", "crd/agentexecutions.agentexec.io")
            plane.kubectl("create", "namespace", "bench")
            plane.kubectl("apply", "-n", "bench", "-f", str(ROOT / "examples" / "echo.yaml"))
            api = k8s.CustomObjectsApi(plane.api)

            def by_client() -> object:
                return api.get_namespaced_custom_object(
                    "agentexec.io", "v1alpha1", "bench", "agentexecutions", "hello-echo"
                )

            def by_kubectl() -> object:
                return plane.kubectl_json("get", "-n", "bench", "aex", "hello-echo")

            by_client()  # the first call dials
            kubectl = statistics.median(timed(by_kubectl, args.calls))
            client = statistics.median(timed(by_client, args.calls))
        finally:
            plane.stop()
    print(f"GET one AgentExecution, median of {args.calls}:")
    print(f"  kubectl get -o json   {kubectl * 1000:7.1f} ms")
    print(f"  kubernetes client     {client * 1000:7.1f} ms")
    print(f"  ratio kubectl/client  {kubectl / client:7.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
