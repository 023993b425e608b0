"""``check_runner``: has a runner taken a waiting attempt, and does any poll its queue?

The workflow cannot see whether its activity started, nor who polls a task
queue; it asks this activity, which the operator's own worker serves on the
workflow's task queue, with the worker's client (two reads: the calling
workflow's pending activity, and the runner queue's pollers). NoRunner is
then said only when no runner polls at all, never because runners are busy
(issue #18, 10).

Temporal lists a poller for five minutes after its last poll
(PollerHistoryTTL), and a runner whose every slot is taken does not poll:
runners all busy for longer than that, without one finishing, look absent.
The workflow therefore fails an attempt for NoRunner only when no runner
polled for a whole deadline.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import PendingActivityState, TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    DescribeWorkflowExecutionRequest,
)

from agentexec.temporal.types import CHECK_RUNNER_ACTIVITY, RunnerCheck, RunnerSeen


@activity.defn(name=CHECK_RUNNER_ACTIVITY)
async def check_runner(check: RunnerCheck) -> RunnerSeen:
    info = activity.info()
    client = activity.client()
    service = client.workflow_service
    namespace = info.workflow_namespace or client.namespace
    described = await service.describe_workflow_execution(
        DescribeWorkflowExecutionRequest(
            namespace=namespace,
            execution=WorkflowExecution(
                workflow_id=info.workflow_id or "", run_id=info.workflow_run_id or ""
            ),
        ),
        retry=True,
    )
    for pending in described.pending_activities:
        if pending.activity_id != check.activity_id:
            continue
        if pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
            started = pending.last_started_time
            return RunnerSeen(
                started=True,
                started_at=started.seconds + started.nanos / 1e9 if started.seconds else None,
            )
        break
    else:
        # Not pending any more: it ended (the workflow learns how itself).
        return RunnerSeen(started=True)
    queue = await service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=namespace,
            task_queue=TaskQueue(
                name=check.runner_task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
            ),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ),
        retry=True,
    )
    return RunnerSeen(started=False, pollers=len(queue.pollers))
