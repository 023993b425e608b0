"""agentexec: run AgentExecution resources as durable Temporal workflows."""

# The one source of the release version: the package metadata (pyproject.toml),
# `--version`, the build_info metric, the image tag and the chart's version and
# appVersion (checked by tests/unit/test_release.py) all follow it.
__version__ = "0.2.0"
