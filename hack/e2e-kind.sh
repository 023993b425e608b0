#!/usr/bin/env bash
# make e2e-kind: the node tier's scenarios (tests/node) on a kind cluster
# instead of the local node: the same tests, the same images (built here,
# loaded with `kind load`, never pulled: no `:latest` anywhere). kind is built
# from its Go module at KIND_VERSION into .cache/bin; the node image is
# KIND_NODE_IMAGE (hack/versions.env), pinned by digest. Where there is no
# Docker engine or kind's node image cannot be pulled, pytest reports the
# tests SKIPPED with the reason (skipped, not passed).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export AGENTEXEC_CLUSTER=kind
exec .venv/bin/python -m pytest -p no:cacheprovider -m node tests/node/test_scenarios.py "$@"
