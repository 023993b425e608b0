# syntax=docker/dockerfile:1
# agentexec-operator: multi-stage, slim, non-root, read-only-root friendly.

# Both stages use the same base (the venv links to its python). A local build
# passes a stand-in (localenv/images.py: python_base_image) rather than
# shadowing the official tag.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# build-ca.pe[m] matches nothing in a plain `docker build .`; localenv/images.py
# adds the host's CA bundle under that name where TLS to the package index is
# intercepted. It lives in this stage only: the final one copies the venv.
COPY pyproject.toml README.md constraints.txt build-ca.pe[m] ./
COPY operator ./operator
# PIP_CONSTRAINT (not -c) also pins the isolated build's setuptools. The
# venv's own pip and setuptools (about 25 MB) are not needed to run.
RUN if [ -f build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && python -m venv /opt/agentexec \
 && PIP_CONSTRAINT=/src/constraints.txt /opt/agentexec/bin/pip install --no-compile . \
 && /opt/agentexec/bin/pip uninstall --yes --quiet pip setuptools

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="agentexec-operator" \
      org.opencontainers.image.description="Runs AgentExecution resources as durable Temporal workflows"
# MALLOC_ARENA_MAX: the SDK core's threads would otherwise each grow a malloc
# arena, which shows as resident memory (docs/benchmarks.md).
ENV PATH=/opt/agentexec/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
COPY --from=build /opt/agentexec /opt/agentexec
RUN groupadd --gid 10001 agentexec \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin agentexec
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["agentexec-operator"]
