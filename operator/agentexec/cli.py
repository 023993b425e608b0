"""The console command ``agentexec-operator``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from agentexec import __version__
from agentexec.logs import configure_logging
from agentexec.settings import SettingsError, load_settings


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
    args = parser.parse_args(argv)
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"agentexec-operator: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print("configuration ok")
        return 0
    configure_logging(settings.log_level, settings.log_format)
    from agentexec.app import run  # imports kopf and temporalio: after the config check

    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
