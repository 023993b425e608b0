"""The console command ``agentexec-operator`` (and ``agentexec-operator runner``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from agentexec import __version__
from agentexec.logs import configure_logging
from agentexec.settings import Configuration, Settings, read_configuration

PROG = "agentexec-operator"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Run AgentExecution resources as durable Temporal workflows. "
            "Configured by environment variables: see README.md (Configuration)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help=(
            "print the effective configuration, name every problem (bad values, "
            "variables no setting reads, missing credentials) and exit: 0 if none, else 2"
        ),
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
        help="as the operator's --check-config, and check the agents to serve too",
    )
    args = parser.parse_args(argv)
    config = read_configuration(os.environ)
    if args.command == "runner":
        return _runner(config, check_only=args.check_config)
    if args.check_config:
        return report(config, PROG, *_kubernetes_credentials())
    if config.problems:
        return _invalid(PROG, config.problems)
    settings = config.settings
    configure_logging(settings.log_level, settings.log_format)
    _warn_unknown(config)
    # Imports kopf and temporalio: after the configuration is known good.
    from agentexec.app import run
    from agentexec.kube import NoCredentials

    try:
        asyncio.run(run(settings))
    except NoCredentials as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0


def report(
    config: Configuration,
    prog: str,
    problems: Sequence[str] = (),
    facts: Sequence[str] = (),
    ok: str = "configuration ok",
) -> int:
    """--check-config: the effective configuration on stdout, every problem on
    stderr; 2 if there is any."""
    print(f"{prog} {__version__}: effective configuration")
    width = max(len(v.name) for v in config.variables)
    for var in config.variables:
        where = "  (default)" if var.source == "default" else ""
        print(f"  {var.name:<{width}}  {var.value}{where}")
    for fact in facts:
        print(fact)
    found = [*config.problems, *config.unknown, *problems]
    if found:
        print(f"{prog}: the configuration has {len(found)} problem(s):", file=sys.stderr)
        for problem in found:
            print(f"  {problem}", file=sys.stderr)
        return 2
    print(ok)
    return 0


def _kubernetes_credentials() -> tuple[list[str], list[str]]:
    """(problems, facts): where the operator's Kubernetes credentials come from."""
    from agentexec.kube import NoCredentials, describe_credentials, login

    try:
        return [], [f"Kubernetes: {describe_credentials(login())}"]
    except NoCredentials as exc:
        return [str(exc)], []


def _invalid(prog: str, problems: Sequence[str]) -> int:
    print(f"{prog}: invalid configuration: {'; '.join(problems)}", file=sys.stderr)
    return 2


def _warn_unknown(config: Configuration) -> None:
    # Not fatal when running (a pod may carry variables meant for other
    # tools); --check-config fails on them.
    for problem in config.unknown:
        logging.getLogger("agentexec").warning("ignored variable: %s", problem)


def _runner(config: Configuration, check_only: bool) -> int:
    from agentexec.runner import check_agents, configure_agents, load_agents
    from agentexec.runner.process import exit_without_finalizing, run_runner, select_agents
    from agentexec.runner.tools import McpServers

    prog = f"{PROG} runner"
    settings: Settings = config.settings
    if settings.metrics_secure:
        # Checking tokens takes the API server, and a runner holds no
        # Kubernetes credentials (its agents would hold them too).
        config = dataclasses.replace(
            config,
            problems=(
                *config.problems,
                "AGENTEXEC_METRICS_SECURE: the operator's only; a runner has no Kubernetes "
                "credentials to check tokens with (limit who reaches it with a NetworkPolicy)",
            ),
        )
    if config.problems and not check_only:
        return _invalid(prog, config.problems)
    # --check-config says what is wrong itself: no log lines besides.
    configure_logging("ERROR" if check_only else settings.log_level, settings.log_format)
    try:
        # Strict: an agent that cannot be loaded stops the runner (unless
        # AGENTEXEC_RUNNER_AGENTS leaves it out), and so does a configuration
        # its agents refuse (a malformed providers file), here and with
        # --check-config rather than in every execution.
        agents = select_agents(settings, load_agents(only=settings.runner_agents, strict=True))
        configure_agents(agents, settings)
        mcp_servers = McpServers(settings.mcp_servers_file, settings.proxy)
        if not check_only:
            mcp_servers.configure()
    except ValueError as exc:
        if check_only:
            return report(config, prog, [str(exc)])
        return _invalid(prog, [str(exc)])
    if not agents:
        if check_only:
            return report(config, prog, ["no agents installed to serve"])
        print(f"{prog}: no agents installed to serve", file=sys.stderr)
        return 2
    if check_only:
        served = ", ".join(sorted(agents))
        return report(
            config,
            prog,
            [*check_agents(agents, settings), *mcp_servers.check()],
            ok=f"configuration ok: agents {served}",
        )
    _warn_unknown(config)
    asyncio.run(run_runner(settings, agents))
    return exit_without_finalizing(0)


if __name__ == "__main__":
    sys.exit(main())
