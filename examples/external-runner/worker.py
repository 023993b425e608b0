"""An external runner: serves the agent "shout" on a task queue of its own.

Run it:  TEMPORAL_ADDRESS=localhost:7233 AGENTEXEC_HTTP_PORT=8081 python worker.py shout
Then:    kubectl apply -f examples/external-runner/execution.yaml
Heartbeats, cancellation, retries and SIGTERM are handled by agentexec.runner
(docs/agents.md); any Temporal worker in any language serving run_agent works too.
"""

import sys

from agentexec.runner import AgentRequest, serve


async def shout(request: AgentRequest) -> str:
    return request.message.upper() + "!"


if __name__ == "__main__":
    serve({"shout": shout}, task_queue=sys.argv[1] if len(sys.argv) > 1 else "shout")
