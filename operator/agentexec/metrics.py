"""Every Prometheus metric the operator exports. The names are a contract:
alerts, dashboards and docs/operations.md use them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agentexec import __version__
from agentexec.policy import NamespacePolicy, used_now

CONNECTION_LABELS = ("host_port", "namespace")
# Counters' `_created` series double the series count and no alert uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """One set of collectors on one registry (a fresh registry per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # process_* (CPU, memory, file descriptors) and python_info, as every
        # Python exporter has them.
        r.register(PROCESS_COLLECTOR)
        r.register(PLATFORM_COLLECTOR)
        self.build_info = Gauge(
            "agentexec_build_info",
            "Always 1; the labels say which build runs.",
            ("version",),
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        self.connection_status = Gauge(
            "temporal_connection_status",
            "1 while the operator's Temporal health probe succeeds, else 0.",
            CONNECTION_LABELS,
            registry=r,
        )
        self.reconnection_attempts = Counter(
            "temporal_reconnection_attempts",
            "Attempts to re-establish the connection: dials after the first one, "
            "and health probes made while disconnected (they drive the SDK to reconnect).",
            CONNECTION_LABELS,
            registry=r,
        )
        self.connection_duration = Histogram(
            "temporal_connection_duration_seconds",
            "Length of each connected spell, observed when it ends.",
            CONNECTION_LABELS,
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, float("inf")),
            registry=r,
        )
        self.workers_running = Gauge(
            "temporal_workers_running",
            "Temporal workers currently running in this operator process.",
            CONNECTION_LABELS,
            registry=r,
        )
        self.circuit_open = Gauge(
            "temporal_circuit_open",
            "1 while re-dials back off with the circuit-open ceiling, else 0.",
            CONNECTION_LABELS,
            registry=r,
        )
        self.probe_duration = Histogram(
            "temporal_health_probe_duration_seconds",
            "Duration of Temporal health probes, failed ones included.",
            CONNECTION_LABELS,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.probe_failures = Counter(
            "temporal_health_probe_failures",
            "Temporal health probes that failed or timed out.",
            CONNECTION_LABELS,
            registry=r,
        )
        self.executions = Gauge(
            "agentexec_executions",
            "AgentExecutions this operator sees, by phase (Unknown: no phase yet).",
            ("phase",),
            registry=r,
        )
        self.workflow_starts = Counter(
            "agentexec_workflow_starts",
            "Workflow start attempts by result: started, closed (it had already run), "
            "unavailable, rejected.",
            ("result",),
            registry=r,
        )
        self.waiting_for_temporal = Gauge(
            "agentexec_waiting_for_temporal",
            "Executions queued until Temporal is available.",
            registry=r,
        )
        self.executions_finished = Counter(
            "agentexec_executions_finished",
            "Executions that reached a terminal phase, by phase and reason.",
            ("phase", "reason"),
            registry=r,
        )
        self.executions_deleted_by_ttl = Counter(
            "agentexec_executions_deleted_by_ttl",
            "Finished executions deleted because their ttlSecondsAfterFinished ran out.",
            registry=r,
        )
        self.execution_duration = Histogram(
            "agentexec_execution_duration_seconds",
            "Time from creation to a terminal phase, by phase.",
            ("phase",),
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "agentexec_reconcile_duration_seconds",
            "Duration of one reconcile of one execution (handler=reconcile).",
            ("handler",),
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.reconcile_errors = Counter(
            "agentexec_reconcile_errors",
            "Reconciles that failed and were retried with backoff, by handler.",
            ("handler",),
            registry=r,
        )
        # The runner process (`agentexec-operator runner`, or the built-in one).
        self.runner_agents_running = Gauge(
            "agentexec_runner_agents_running",
            "Agent attempts this runner is running now.",
            registry=r,
        )
        self.runner_agent_attempts = Counter(
            "agentexec_runner_agent_attempts",
            "Agent attempts this runner ended, by agent and outcome (succeeded, "
            "failed, error, cancelled, unknown_agent).",
            ("agent", "outcome"),
            registry=r,
        )
        # Installs never cross (#22): another install's pollers on our
        # queues, and reports of workflows that are not ours.
        self.foreign_pollers = Gauge(
            "agentexec_foreign_pollers",
            "Pollers of this install's task queues whose identity is not this install's "
            "(AGENTEXEC_INSTALL), as Temporal listed them when the operator connected.",
            ("task_queue", "task_queue_type"),
            registry=r,
        )
        self.foreign_reports = Counter(
            "agentexec_foreign_reports",
            "Workflow reports refused because they are about no execution of this install "
            "(another install's workflow on a shared task queue), by reason.",
            ("reason",),
            registry=r,
        )
        # Tokens and budgets (#22).
        self.tokens = Counter(
            "agentexec_tokens",
            "Tokens the agents reported, counted by the runner that ran them (failed and "
            "stopped attempts too), by the execution's namespace (execution_namespace: a "
            "scrape adds its own namespace label), agent (the Agent or built-in name), "
            "provider, model and kind (prompt or completion).",
            ("execution_namespace", "agent", "provider", "model", "kind"),
            registry=r,
        )
        # Each ExecutionPolicy budget and its spending in the current period,
        # read from the policies the operator watches when scraped (a period
        # that rolled over reads 0 without waiting for a write).
        self.budgets: Callable[[], Iterable[NamespacePolicy]] = list
        r.register(_BudgetCollector(self))
        # Every series exists from the start (at 0), so rate() and alerts see
        # the first increment instead of a series appearing from nowhere.
        for result in ("started", "closed", "unavailable", "rejected"):
            self.workflow_starts.labels(result=result)
        self.reconcile_errors.labels(handler="reconcile")
        for reason in ("unknown_execution", "other_install"):
            self.foreign_reports.labels(reason=reason)


class _BudgetCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # execution_namespace: the policy's namespace (a scrape adds the pod's
        # as namespace).
        labels = ("execution_namespace", "policy", "period")
        budget = GaugeMetricFamily(
            "agentexec_namespace_token_budget",
            "Tokens a namespace may spend per period (its ExecutionPolicy's spec.budget.tokens).",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "agentexec_namespace_tokens_used",
            "Tokens a namespace spent in the current period of its ExecutionPolicy's budget "
            "(status.budget.used, counted as its executions finish).",
            labels=labels,
        )
        now = datetime.now(UTC)
        for policy in self.metrics.budgets():
            if policy.budget_tokens is None or policy.budget_period is None:
                continue
            values = [policy.namespace, policy.name, policy.budget_period]
            budget.add_metric(values, policy.budget_tokens)
            used.add_metric(values, used_now(policy, now))
        yield budget
        yield used
