#!/usr/bin/env bash
# make e2e-kind: the chart and the image on a kind cluster, then the e2e
# scenario against it. Needs Docker and kind; without a Docker engine it
# prints one line and exits 0 (skipped, not passed).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

if ! docker info >/dev/null 2>&1; then
  echo "e2e-kind: SKIPPED (not run, not passed): no Docker engine reachable here; kind needs one"
  exit 0
fi
command -v kind >/dev/null || { echo "e2e-kind: kind not found (go install sigs.k8s.io/kind@latest)"; exit 1; }

source hack/versions.env
CLUSTER=${KIND_CLUSTER:-agentexec-e2e}
IMAGE=agentexec-operator:e2e
HELM=.cache/bin/helm-$HELM_VERSION-r$HELM_BUILD_REV
KUBECTL=.venv/bin/kubectl
export KUBECONFIG=$ROOT/.cache/kind-kubeconfig

cleanup() { kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

kind create cluster --name "$CLUSTER" --image "kindest/node:$KUBE_VERSION" --wait 120s
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

# Temporal in the cluster: the temporal CLI image's dev server, one replica.
$KUBECTL create namespace temporal
$KUBECTL -n temporal create deployment temporal --image=temporalio/temporal:latest --port=7233 \
  -- temporal server start-dev --ip 0.0.0.0 --headless
$KUBECTL -n temporal expose deployment temporal --port=7233
$KUBECTL -n temporal rollout status deploy/temporal --timeout=180s

$HELM install agentexec charts/agentexec-operator --namespace agentexec --create-namespace \
  --set image.repository=agentexec-operator --set image.tag=e2e --set image.pullPolicy=Never \
  --set temporal.address=temporal.temporal:7233 --wait --timeout 180s

$KUBECTL apply -f examples/echo.yaml
$KUBECTL wait --for=jsonpath='{.status.phase}'=Succeeded aex/hello-echo --timeout=120s
$KUBECTL get aex
echo "e2e-kind: passed"
