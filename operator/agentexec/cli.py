"""The console command ``agentexec-operator`` (and ``agentexec-operator runner``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from agentexec import __version__
from agentexec.logs import configure_logging
from agentexec.settings import Settings, SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="agentexec-operator",
        description=(
            "Run AgentExecution resources as durable Temporal workflows. "
            "Configured by environment variables: see README.md (Configuration)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration from the environment and exit",
    )
    commands = parser.add_subparsers(dest="command", metavar="{runner}")
    runner = commands.add_parser(
        "runner",
        help="serve runner task queues: run agents (no Kubernetes access needed)",
        description=(
            "Serve the agents registered under the agentexec.agents entry points on "
            "AGENTEXEC_RUNNER_TASK_QUEUES (default AGENTEXEC_RUNNER_TASK_QUEUE). Needs "
            "Temporal only: no Kubernetes client, no Kubernetes credentials."
        ),
    )
    runner.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and the agents to serve, and exit",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"agentexec-operator: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "runner":
        return _runner(settings, check_only=args.check_config)
    if args.check_config:
        print("configuration ok")
        return 0
    configure_logging(settings.log_level, settings.log_format)
    from agentexec.app import run  # imports kopf and temporalio: after the config check

    asyncio.run(run(settings))
    return 0


def _runner(settings: Settings, check_only: bool) -> int:
    from agentexec.runner import configure_agents, load_agents
    from agentexec.runner.process import exit_without_finalizing, run_runner, select_agents

    configure_logging(settings.log_level, settings.log_format)
    try:
        # Strict: an agent that cannot be loaded stops the runner (unless
        # AGENTEXEC_RUNNER_AGENTS leaves it out), and so does a configuration
        # its agents refuse (a malformed providers file), here and with
        # --check-config rather than in every execution.
        agents = select_agents(settings, load_agents(only=settings.runner_agents, strict=True))
        configure_agents(agents, settings)
    except ValueError as exc:
        print(f"agentexec-operator runner: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if not agents:
        print("agentexec-operator runner: no agents installed to serve", file=sys.stderr)
        return 2
    if check_only:
        print(f"configuration ok: agents {', '.join(sorted(agents))}")
        return 0
    asyncio.run(run_runner(settings, agents))
    return exit_without_finalizing(0)


if __name__ == "__main__":
    sys.exit(main())
