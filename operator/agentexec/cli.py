"""The console command ``agentexec-operator`` (and ``agentexec-operator runner``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

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
    commands = parser.add_subparsers(dest="command", metavar="{runner,codec-server}")
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
    runner.add_argument(
        "--drain",
        action="store_true",
        help=(
            "ask the runner of this pod (AGENTEXEC_HTTP_PORT on loopback) to stop taking "
            "agents and wait until those in flight finished or were handed over: the "
            "chart's preStop hook"
        ),
    )
    codec = commands.add_parser(
        "codec-server",
        help="serve Temporal's remote codec protocol: read encrypted histories "
        "(temporal --codec-endpoint, the Temporal UI)",
        description=(
            "Decode (and encode) payloads with the keys of AGENTEXEC_PAYLOAD_KEYS_DIR, for "
            "`temporal workflow show --codec-endpoint http://127.0.0.1:PORT` and the Temporal "
            "UI's codec endpoint. Whoever reaches it can read every history: it listens on "
            "loopback unless told otherwise, and with --auth-token-file asks for that bearer "
            "token (temporal --codec-auth 'Bearer TOKEN')."
        ),
    )
    codec.add_argument("--listen", default="127.0.0.1", help="address (default 127.0.0.1)")
    codec.add_argument("--port", type=int, default=8081, help="port (default 8081)")
    codec.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="a Temporal UI origin allowed to call it from the browser (CORS); repeatable",
    )
    codec.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="a file holding the token every request must carry as 'Authorization: Bearer ...'",
    )
    args = parser.parse_args(argv)
    if args.command == "runner" and args.drain:
        # The preStop hook: the runner keeps taking agents until it is told,
        # so this imports nothing heavy (no temporalio) before telling it.
        return _drain(read_configuration(os.environ).settings.http_port)
    config = _with_codec(read_configuration(os.environ))
    if args.command == "codec-server":
        return _codec_server(config, args)
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


def _drain(port: int) -> int:
    """Ask the runner serving ``port`` in this pod to drain, and wait for it
    (the kubelet bounds the hook by the pod's grace period). Straight to
    loopback: never through the pod's HTTP(S)_PROXY."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(f"http://127.0.0.1:{port}/drain", timeout=None) as answer:
            print(answer.read().decode())
    except OSError as exc:  # URLError and HTTPError are OSErrors
        print(f"{PROG} runner --drain: no drain from port {port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _with_codec(config: Configuration) -> Configuration:
    """The payload keys, checked here (a problem like any other) rather than
    at the first payload."""
    from agentexec.temporal.codec import build_codec

    settings = config.settings
    try:
        build_codec(settings.payload_keys_dir, settings.payload_key_id)
    except ValueError as exc:
        return dataclasses.replace(config, problems=(*config.problems, str(exc)))
    return config


def _codec_server(config: Configuration, args: argparse.Namespace) -> int:
    from agentexec.temporal.codec import EncryptionCodec, KeyRing
    from agentexec.temporal.codec_server import serve_codec

    settings = config.settings
    configure_logging(settings.log_level, settings.log_format)
    if settings.payload_keys_dir is None:
        print(
            "agentexec-operator codec-server: AGENTEXEC_PAYLOAD_KEYS_DIR names no keys directory",
            file=sys.stderr,
        )
        return 2
    try:
        keys = KeyRing(settings.payload_keys_dir)
        # Decoding needs any key; encoding (the UI's, rarely) the current one.
        current = settings.payload_key_id or (keys.ids[-1] if keys.ids else "")
        codec = EncryptionCodec(keys, current)
        token = args.auth_token_file.read_text().strip() if args.auth_token_file else None
    except (ValueError, OSError) as exc:
        print(f"agentexec-operator codec-server: invalid configuration: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_codec(codec, args.listen, args.port, args.allow_origin, token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
