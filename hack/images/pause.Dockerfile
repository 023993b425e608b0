# The pod sandbox image the node's containerd names as sandbox_image.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
