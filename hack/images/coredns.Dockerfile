# CoreDNS from its Go module; kubeadm's manifest passes only arguments.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY coredns /coredns
ENTRYPOINT ["/coredns"]
