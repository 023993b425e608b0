"""The console command ``agentexec-operator`` (and ``agentexec-operator runner``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

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
        help="validate the configuration and the agents to serve, and exit",
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
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"agentexec-operator: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "codec-server":
        return _codec_server(settings, args)
    try:
        # The payload keys, checked here rather than at the first payload.
        _check_codec(settings)
    except ValueError as exc:
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


def _check_codec(settings: Settings) -> None:
    from agentexec.temporal.codec import build_codec

    build_codec(settings.payload_keys_dir, settings.payload_key_id)


def _codec_server(settings: Settings, args: argparse.Namespace) -> int:
    from agentexec.temporal.codec import EncryptionCodec, KeyRing
    from agentexec.temporal.codec_server import serve_codec

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
