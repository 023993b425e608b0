# One Kubernetes component (or etcd, or kind's storage provisioner) built
# from its Go module, where kubeadm's and kind's manifests start it: by name
# on PATH (localenv/kindimages.py).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG BIN
COPY ${BIN} /usr/local/bin/${BIN}
