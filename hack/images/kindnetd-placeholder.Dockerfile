# Stands under the name of kind's CNI daemon, kindnetd, which cannot be
# built here (its Go module, sigs.k8s.io/kind/images/kindnetd, is not served
# by the module proxy). `kind build node-image` needs an image of that name;
# clusters here disable kind's default CNI (localenv/kind.py), so nothing
# runs it, and if something did it would say why and stop.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.description="placeholder for kindnetd: not built here; the cluster uses disableDefaultCNI"
ENTRYPOINT ["sh", "-c", "echo 'kindnetd placeholder: kindnetd is not built here (localenv/kindimages.py); create the cluster with disableDefaultCNI' >&2; exit 1"]
