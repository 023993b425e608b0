# A local stand-in for python:3.11-slim-bookworm where no registry is
# reachable: Debian's own python3 (3.11) and venv on the debootstrap base
# (localenv/images.py: python_base_image).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# Unpinned on purpose: the suite (bookworm) pins the versions; the tag is
# keyed by IMAGES_BUILD_REV in hack/versions.env.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
CMD ["python3"]
