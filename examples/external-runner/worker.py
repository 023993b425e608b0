"""An external runner: serves a runner task queue from its own process.

The operator's workflow sends the agent call as the activity ``run_agent`` to
``spec.taskQueue``. Any Temporal worker, in any language, that registers an
activity of that name on that queue serves it. Input and output are JSON:

    input:  {"agent": str, "message": str, "session_id": str | null,
             "parameters": {...}, "execution": {"namespace", "name", "uid"}}
    output: {"output": str}

Raise a non-retryable ApplicationError of type "AgentError" for a failure
that retrying cannot fix; any other error is retried (3 attempts).

Run it:  python examples/external-runner/worker.py --address localhost:7233 --task-queue shout
Then:    kubectl apply -f examples/external-runner/execution.yaml
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker


@activity.defn(name="run_agent")
async def run_agent(request: dict[str, Any]) -> dict[str, str]:
    if request["agent"] != "shout":
        raise ApplicationError(
            f"this runner only knows 'shout', not {request['agent']!r}",
            type="UnknownAgent",
            non_retryable=True,
        )
    activity.heartbeat()
    return {"output": request["message"].upper() + "!"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:7233")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", default="shout")
    args = parser.parse_args()
    client = await Client.connect(args.address, namespace=args.namespace)
    worker = Worker(client, task_queue=args.task_queue, activities=[run_agent])
    print(f"serving run_agent on task queue {args.task_queue!r}", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
