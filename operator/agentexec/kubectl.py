"""``kubectl agentexec``: a kubectl plugin (the package installs it as the
``kubectl-agentexec`` console script, so kubectl finds it on PATH).

    kubectl agentexec approve NAME [--reason TEXT] [--id CALL]
    kubectl agentexec reject NAME [--reason TEXT] [--id CALL]
    kubectl agentexec steps NAME [--follow]

approve/reject create an AgentApproval for the call the execution waits for
(status.pendingApproval): whether you may is RBAC's answer (create on
agentapprovals), and the approver recorded is your user name as the API
server knows it. steps reads the loop's steps from Temporal (the workflow's
``steps`` query), not from status: TEMPORAL_ADDRESS (and TEMPORAL_NAMESPACE)
say where. kubectl's own -n/--namespace, --context, --kubeconfig and --as
are passed on to the kubectl it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from agentexec.temporal.steps import STEPS_QUERY, StepRecord, StepsView

PASSED_ON = ("namespace", "context", "kubeconfig", "as_user")


class PluginError(Exception):
    """Said to the user, exit 1."""


def _kubectl(args: argparse.Namespace, *argv: str, stdin: str | None = None) -> str:
    command = [os.environ.get("KUBECTL", "kubectl")]
    for name in PASSED_ON:
        value = getattr(args, name, None)
        if value:
            flag = "--as" if name == "as_user" else f"--{name}"
            command.append(f"{flag}={value}")
    result = subprocess.run(
        [*command, *argv], input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise PluginError(result.stderr.strip() or f"kubectl {' '.join(argv)} failed")
    return result.stdout


def _execution(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        _kubectl(args, "get", "agentexecution", args.name, "-o", "json")
    )
    return data


def build_approval(
    execution: dict[str, Any], call: str, approve: bool, approver: str, reason: str
) -> dict[str, Any]:
    """The AgentApproval for ``call`` of ``execution``, owned by it (deleted with it)."""
    meta = execution["metadata"]
    spec: dict[str, Any] = {
        "execution": meta["name"],
        "id": call,
        "decision": "Approve" if approve else "Reject",
        "approver": approver,
    }
    if reason:
        spec["reason"] = reason
    return {
        "apiVersion": "agentexec.io/v1alpha1",
        "kind": "AgentApproval",
        "metadata": {
            "generateName": f"{meta['name'][:200]}-",
            "namespace": meta["namespace"],
            "ownerReferences": [
                {
                    "apiVersion": "agentexec.io/v1alpha1",
                    "kind": "AgentExecution",
                    "name": meta["name"],
                    "uid": meta["uid"],
                }
            ],
        },
        "spec": spec,
    }


def decide(args: argparse.Namespace, approve: bool) -> str:
    execution = _execution(args)
    pending = (execution.get("status") or {}).get("pendingApproval") or {}
    call = args.id or pending.get("id")
    if not call:
        raise PluginError(
            f"{args.name} waits for no approval (status.pendingApproval is empty); "
            "name the call with --id to decide ahead"
        )
    # Filled in (and checked) at admission from your credentials; the admission
    # policy refuses any other name, so ask the API server who you are.
    who = _kubectl(args, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").strip()
    body = build_approval(execution, str(call), approve, who, args.reason or "")
    created = json.loads(_kubectl(args, "create", "-o", "json", "-f", "-", stdin=json.dumps(body)))
    verb = "approved" if approve else "rejected"
    tool = f" (tool {pending.get('tool')!r})" if pending.get("id") == call else ""
    return f"call {call}{tool} of {args.name} {verb}: agentapproval/{created['metadata']['name']}"


def format_record(record: StepRecord) -> str:
    name = f" {record.name}" if record.name else ""
    mark = " !" if record.error else ""
    tokens = f" [{record.tokens} tokens]" if record.tokens else ""
    return f"{record.at}  step {record.step:>3}  {record.kind}{name}{mark}{tokens}  {record.detail}"


async def _query(workflow_id: str, namespace: str) -> StepsView:
    from temporalio.client import Client

    client = await Client.connect(
        os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"), namespace=namespace
    )
    view: StepsView = await client.get_workflow_handle(workflow_id).query(
        STEPS_QUERY, result_type=StepsView
    )
    return view


def steps(args: argparse.Namespace, out: Any = sys.stdout) -> None:
    execution = _execution(args)
    workflow = (execution.get("status") or {}).get("workflow") or {}
    if not workflow.get("id"):
        raise PluginError(f"{args.name} has no workflow yet (status.workflow is empty)")
    namespace = workflow.get("namespace") or os.environ.get("TEMPORAL_NAMESPACE", "default")
    shown: set[StepRecord] = set()
    while True:
        view = asyncio.run(_query(str(workflow["id"]), str(namespace)))
        # The workflow keeps its latest records only: show those not shown yet.
        for record in view.records:
            if record not in shown:
                shown.add(record)
                print(format_record(record), file=out, flush=True)
        progress = view.progress
        if not args.follow or view.done:
            print(
                f"-- step {progress.step}/{progress.max_steps}: {progress.current}, "
                f"{progress.tool_calls} tool calls, "
                f"{progress.usage.total_tokens if progress.usage else 0} tokens",
                file=out,
            )
            return
        time.sleep(1.0)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubectl agentexec", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--namespace")
    parser.add_argument("--context")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--as", dest="as_user")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in ("approve", "reject"):
        p = sub.add_parser(verb, help=f"{verb} the tool call an AgentExecution waits for")
        p.add_argument("name")
        p.add_argument("--reason", default="")
        p.add_argument(
            "--id", help="the call (status.pendingApproval.id); default: the pending one"
        )
    p = sub.add_parser("steps", help="the steps of an assistant's execution, from Temporal")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the loop ends")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "steps":
            steps(args)
            # The Temporal client's core threads may still let go of Python
            # objects at exit, which aborts a finalizing interpreter (SIGABRT):
            # leave as the runner does (runner/process.py).
            from agentexec.runner.process import exit_without_finalizing

            exit_without_finalizing(0)
        else:
            print(decide(args, approve=args.command == "approve"))
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
