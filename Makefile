# agentexec-operator. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST := $(PY) -m pytest -p no:cacheprovider
INSTALLED := $(VENV)/.installed
CHART := charts/agentexec-operator
HELM = $(shell bash -c 'source hack/versions.env; echo .cache/bin/helm-$$HELM_VERSION-r$$HELM_BUILD_REV')
PROMTOOL = $(shell bash -c 'source hack/versions.env; echo .cache/bin/promtool-$$PROMETHEUS_VERSION')
KUBE_SCORE = $(shell bash -c 'source hack/versions.env; echo .cache/bin/kube-score-$$KUBE_SCORE_VERSION')
KUBE_MINOR = $(shell bash -c 'source hack/versions.env; echo $${KUBE_VERSION%.*}')
SCORE_EXCEPTIONS := charts/kube-score-exceptions.txt

# pytest exits 5 when a tier collects no test: that is not a failure. Each
# tier prints its time (the CI budget is kept per tier).
define pytest_tier
start=$$(date +%s); \
$(PYTEST) $(1) || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests in $(1)" || exit $$rc; }; \
echo "tier $(1): $$(( $$(date +%s) - start ))s"
endef

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

# The package version is read from __init__.py at install (pyproject dynamic).
$(INSTALLED): pyproject.toml operator/agentexec/__init__.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install
install: $(INSTALLED) binaries openai-server ## Create .venv with the package, dev tools and test binaries

.PHONY: binaries
binaries: $(INSTALLED) ## Build etcd, kube-apiserver, helm, promtool into .cache/bin (once per version)
	PATH=$(abspath $(BIN)):$$PATH bash hack/build-binaries.sh all

.PHONY: openai-server
openai-server: ## Build llama.cpp's OpenAI-compatible server and a tiny model into .cache/tools (once per version)
	PYTHON=$(PYTHON) bash hack/openai-server.sh >/dev/null

.PHONY: run
run: install ## Run the operator on a local control plane + Temporal dev server + a chat provider (USE_KUBECONFIG=1: your current context)
	$(PY) hack/run_local.py $(if $(USE_KUBECONFIG),--use-kubeconfig)

.PHONY: lint
lint: $(INSTALLED) ## ruff, mypy --strict, import-linter, hadolint, helm lint, promtool, kube-score
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile hack/images/*.Dockerfile
	bash -n hack/*.sh
	$(MAKE) --no-print-directory helm-lint
	$(MAKE) --no-print-directory chart-score

.PHONY: fmt
fmt: $(INSTALLED) ## Format and autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: test
test: install lint test-unit test-integration test-e2e test-node ## Everything CI runs: install, lint, all tiers

.PHONY: test-unit
test-unit: $(INSTALLED) ## Unit tier: pure code, no servers
	$(call pytest_tier,tests/unit)

.PHONY: test-integration
test-integration: install ## Integration tier: a real Temporal dev server
	$(call pytest_tier,tests/integration)

.PHONY: test-e2e
test-e2e: install ## E2E tier: real kube-apiserver + etcd + Temporal + the operator
	$(call pytest_tier,tests/e2e)

.PHONY: test-node
test-node: install node-prereqs ## Node tier: the image and chart on a kind cluster built here (kind, a registry, upgrade from the previous release); needs root
	$(call pytest_tier,tests/node)

# Cold, these builds take far longer than a test's timeout: built (or found
# in .cache) before the tier starts, the tier's fixtures only load them.
.PHONY: node-prereqs
node-prereqs: $(INSTALLED) ## Build what the node tier runs into .cache: kind, the registry, kind's node image, this checkout's and the previous release's images
	start=$$(date +%s); \
	for tool in kind registry; do PATH=$(abspath $(BIN)):$$PATH bash hack/build-binaries.sh $$tool; done; \
	$(PY) -m localenv.images operator temporal kind-node previous; \
	echo "node-prereqs: $$(( $$(date +%s) - start ))s"

.PHONY: e2e-kind
e2e-kind: test-node ## The node tier by the name users know it: everything on kind

.PHONY: image
image: $(INSTALLED) ## Build the image agentexec-operator:dev (starts the project's own dockerd where none runs)
	$(PY) -m localenv.images operator --tag agentexec-operator:dev

.PHONY: release
release: binaries ## dist/: the chart package, the image (OCI archive + digest), its SBOM (CycloneDX), SHA256SUMS
	$(PY) -m localenv.release

.PHONY: version
version: $(INSTALLED) ## Print the release version (its one source: operator/agentexec/__init__.py)
	@$(PY) -c 'from localenv.release import project_version; print(project_version())'

.PHONY: helm-lint
helm-lint: binaries ## helm lint --strict (defaults and everything on), promtool check rules and test rules
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict $(CHART) -f $(CHART)/ci/everything-on-values.yaml
	$(PROMTOOL) check rules $(CHART)/files/alerts.yaml
	$(MAKE) --no-print-directory alerts-test
	@echo "rendered objects are validated by the API server in tests/e2e/test_chart.py"

# One test file per alert group (tests/unit/test_alerts.py checks each group
# has one and each alert is seen firing and silent in it).
.PHONY: alerts-test
alerts-test: binaries ## promtool test rules: every alert fires when it should and stays silent otherwise
	$(PROMTOOL) test rules tests/alerts/*.test.yaml

# kube-score fails on CRITICAL and (--exit-one-on-warning) on WARNING; each
# line of $(SCORE_EXCEPTIONS) is "<render|all> <check> # reason".
.PHONY: chart-score
chart-score: binaries ## kube-score on the default and everything-on renders (exceptions: charts/kube-score-exceptions.txt)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for render in default everything-on; do \
	  values=; [ $$render = default ] || values="-f $(CHART)/ci/everything-on-values.yaml"; \
	  ignores=$$(awk -v r=$$render '!/^#/ && NF && ($$1 == r || $$1 == "all") {printf ($$2 ~ /^--/ ? " %s" : " --ignore-test %s"), $$2}' $(SCORE_EXCEPTIONS)); \
	  $(HELM) template agentexec $(CHART) --namespace agentexec $$values >"$$tmp/$$render.yaml"; \
	  if $(KUBE_SCORE) score --kubernetes-version $(KUBE_MINOR) --exit-one-on-warning \
	       --output-format ci $$ignores "$$tmp/$$render.yaml" >"$$tmp/$$render.txt"; then \
	    echo "kube-score: $$render render OK"; \
	  else \
	    grep -v '^\[OK\]' "$$tmp/$$render.txt"; echo "kube-score: $$render render FAILED"; exit 1; \
	  fi; \
	done

.PHONY: bench
bench: install ## Run bench/manager.py, executions.py, scaling.py, runners.py, operator_client.py, kube_calls.py (figures and ratios)
	$(PY) bench/manager.py
	$(PY) bench/executions.py
	$(PY) bench/scaling.py
	$(PY) bench/runners.py
	$(PY) bench/operator_client.py
	$(PY) bench/kube_calls.py

.PHONY: clean
clean: ## Remove the venv and build outputs (keeps the .cache/ binaries)
	rm -rf $(VENV) build dist *.egg-info operator/*.egg-info
