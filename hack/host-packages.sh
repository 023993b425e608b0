#!/usr/bin/env bash
# The Debian packages the node tier and `make image` need on the host:
# a Docker engine for image builds and kind's nodes, debootstrap for a local
# base image, iptables (the host route to kind's Services needs none, but
# dockerd wants the tools), libseccomp-dev and pkg-config (runc for kind's
# base image links libseccomp), and skopeo (OCI archives: make release, the
# node tier's registry). Installed once (idempotent); prints SKIPPED and
# exits 0 where it cannot install (not root, no apt-get), so callers decide
# what that means.
set -euo pipefail

PACKAGES=(docker.io debootstrap iptables libseccomp-dev pkg-config skopeo)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "host-packages: SKIPPED: cannot install ${missing[*]} (needs root and apt-get)"
  exit 0
fi
echo "host-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A package list older than a day may name versions the mirror no longer has.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package's postinst may start daemons through an init system; there is
# none here and the project starts its own, so nothing else is done.
echo "host-packages: installed ${missing[*]}"
