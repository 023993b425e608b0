# The base of the Kubernetes component images a kind node runs
# (localenv/kindimages.py): the Debian base and the packet-filter tools
# kube-proxy calls (as upstream's distroless-iptables has them).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# Unpinned on purpose: the suite pins the versions; the tag is keyed by
# KIND_IMAGES_REV in hack/versions.env.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables conntrack ipset kmod \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
