"""The one settings object, read once from the environment at start.

Nothing else in the package reads ``os.environ``: ``cli.main`` calls
:func:`read_configuration` (or :func:`load_settings`) and hands the result
down. A bad value stops the operator with a :class:`SettingsError` that names
the variable; ``--check-config`` lists every problem at once, the variables
that look like ours but are not (typos), and the effective configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from agentexec import env_values as parse
from agentexec.backoff import REDIAL, REDIAL_CIRCUIT_CAP

T = TypeVar("T")

DEFAULT_TTL_SECONDS_AFTER_FINISHED = 86400
# Variables with these prefixes that no setting reads are reported (a typo
# configures nothing, silently).
PREFIXES = ("AGENTEXEC_", "TEMPORAL_")
# Variables the kubelet sets for each Service of the namespace (enableServiceLinks),
# e.g. TEMPORAL_SERVICE_HOST for a Service named temporal: never ours.
_SERVICE_LINK = re.compile(
    r"^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$"
)
_SERVICE_LINK_PORT = re.compile(r"^(tcp|udp|sctp)://")


class SettingsError(ValueError):
    """A configuration variable has a value the operator cannot use."""


@dataclass(frozen=True)
class TemporalSettings:
    address: str = "localhost:7233"
    namespace: str = "default"
    # None (TEMPORAL_TLS unset): TLS when anything asks for it (a CA, a client
    # certificate, a server name, an API key, as the SDK does for a key).
    tls: bool | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_name: str | None = None
    # The key is read from a file so a rotated Secret is picked up at runtime.
    api_key_file: Path | None = None
    connect_timeout: float = 10.0
    rpc_timeout: float = 5.0
    probe_interval: float = 1.0
    # While disconnected, probe faster: a failed probe costs milliseconds and
    # recovery is then noticed within this interval.
    probe_interval_disconnected: float = 0.1
    probe_timeout: float = 1.0
    # Seconds probes must keep failing (two at least) before Temporal is
    # called down; 0: the first failed probe. A blip then flips nothing (each
    # flip rewrites every unfinished execution), and an outage is still seen
    # within probe_interval + down_after + probe_interval_disconnected (a
    # refused port) or probe_interval + 2 x probe_timeout (a blackhole).
    down_after: float = 1.0
    backoff_base: float = REDIAL.base
    backoff_max: float = REDIAL.cap
    backoff_jitter: float = REDIAL.jitter
    circuit_threshold: int = 10
    circuit_backoff_max: float = REDIAL_CIRCUIT_CAP
    # Probe failures on one client, while the server answers a plain TCP
    # dial, before the client is considered broken and re-dialled (doubled
    # after each re-dial that brought no good probe).
    redial_after_failures: int = 5
    worker_grace: float = 30.0
    settings_check_interval: float = 10.0

    @property
    def uses_tls(self) -> bool:
        if self.tls is not None:
            return self.tls
        return any(
            value is not None
            for value in (
                self.tls_ca_file,
                self.tls_cert_file,
                self.tls_server_name,
                self.api_key_file,
            )
        )


DEFAULT_INSTALL = "agentexec"


def build_task_queues(install: str) -> tuple[str, str]:
    """The default workflow and runner task queues of an install: derived from
    its identity, so two installs on one Temporal namespace never share one
    (the default install's are the names every release before 0.3 used)."""
    return f"{install}-executions", f"{install}-runner"


@dataclass(frozen=True)
class ProxySettings:
    """HTTPS_PROXY, HTTP_PROXY and NO_PROXY (lower case wins, as in Python's
    urllib): the chat agent's calls to model providers go through them.
    Temporal connections do not (the SDK dials directly)."""

    http: str | None = None
    https: str | None = None
    no_proxy: str = ""


@dataclass(frozen=True)
class Settings:
    temporal: TemporalSettings = field(default_factory=TemporalSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    # The install's identity (the chart: "<release namespace>.<full name>"):
    # the default task queues derive from it, and the pollers of its queues
    # whose identity does not start with it are another install's.
    install: str = DEFAULT_INSTALL
    task_queue: str = build_task_queues(DEFAULT_INSTALL)[0]
    # The queue executions name by default (spec.taskQueue overrides it).
    runner_task_queue: str = build_task_queues(DEFAULT_INSTALL)[1]
    # Workflow queues served without starting anything on them: an upgrade
    # from another task_queue drains the workflows still running on it.
    drain_task_queues: tuple[str, ...] = ()
    # The operator runs agents itself only when asked (make run, tests): an
    # agent on the operator's event loop can stall it, and an operator restart
    # would kill every agent in flight. `agentexec-operator runner` serves them.
    runner_enabled: bool = False
    # The runner process (`agentexec-operator runner`): which queues it polls
    # (empty: runner_task_queue), which agents it serves (empty: every agent
    # registered), and how many agents one runner runs at once per queue.
    runner_task_queues: tuple[str, ...] = ()
    runner_agents: tuple[str, ...] = ()
    runner_max_concurrent: int = 16
    # The chat agent's providers file (URLs, and where each key is mounted);
    # checked when the runner starts, read again at each call.
    providers_file: Path | None = None
    # Payload encryption (agentexec.temporal.codec): the directory of keys
    # (a mounted Secret, file name = key ID) and the key ID that encrypts.
    payload_keys_dir: Path | None = None
    payload_key_id: str | None = None
    # The agent loop's MCP servers configured on the runner (URLs, and headers
    # whose values are mounted from Secrets): runner/tools.py.
    mcp_servers_file: Path | None = None
    # The heartbeat timeout the workflow gives each agent attempt: a runner
    # that died mid-agent is noticed, and the agent retried, after this long.
    runner_heartbeat_timeout: float = 30.0
    # Queues an AgentExecution may name in its own spec.taskQueue: none by
    # default (a namespace reaches the runner queues its Agents name), "*" any.
    execution_task_queues: tuple[str, ...] = ()
    http_port: int = 8080
    # /metrics and /statusz over HTTPS on metrics_port, for callers whose
    # bearer token the API server accepts (TokenReview) and authorizes
    # (SubjectAccessReview: get on the path), as controller-runtime's secure
    # metrics; http_port then serves /healthz and /readyz only. Without
    # cert and key files, a self-signed certificate is made at start.
    metrics_secure: bool = False
    metrics_port: int = 8443
    metrics_cert_file: Path | None = None
    metrics_key_file: Path | None = None
    watch_namespaces: tuple[str, ...] = ()
    queue_ttl: float = 3600.0
    # Default spec.ttlSecondsAfterFinished; None ("never") keeps finished
    # executions. A day: each one kept costs memory in every replica's cache
    # (its message may be 256 KiB), and its result stays in Temporal (#21).
    ttl_seconds_after_finished: int | None = DEFAULT_TTL_SECONDS_AFTER_FINISHED
    start_rate: float = 200.0
    # TTL deletes per second: a TTL set on an install with many finished
    # executions would otherwise delete them all at once, workers-wide.
    delete_rate: float = 50.0
    reconcile_workers: int = 16
    condition_sync_interval: float = 2.0
    # Executions per second whose TemporalConnected condition is refreshed
    # after a connection change: every one is reached, at a bounded write rate.
    condition_sync_rate: float = 500.0
    # How often Temporal is asked which of our workflows closed or vanished
    # (two visibility calls per interval, whatever the number running).
    sweep_interval: float = 3.0
    no_runner_seconds: float = 60.0
    report_timeout: float = 600.0
    # The most often an assistant's loop writes status.progress.
    progress_interval: float = 5.0
    # Attempts of one execution the platform may cut short (a runner stopped
    # or gone) before it fails Disrupted; they spend none of backoffLimit.
    max_disruptions: int = 10
    leader_election: bool = True
    leader_election_namespace: str | None = None  # None: the pod's own namespace, else "default"
    leader_election_name: str = "agentexec-operator"
    # Takeover after a crash within lease + retry (about 11.3 s): the node
    # tier measures it under 15 s. 15 (controller-runtime's) took up to 17.
    leader_election_lease_seconds: float = 10.0
    pod_name: str | None = None  # the leader identity in a pod (downward API)
    pod_namespace: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def runner_queues(self) -> tuple[str, ...]:
        """The queues a runner process polls."""
        return self.runner_task_queues or (self.runner_task_queue,)


def shown(value: object) -> str:
    """A setting's value as --check-config prints it (credentials in a URL masked)."""
    if value is None or value == "":
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    text = str(value)
    if "://" in text and "@" in text:
        parts = urlsplit(text)
        if parts.password is not None:
            text = text.replace(f":{parts.password}@", ":***@", 1)
    return text


@dataclass(frozen=True)
class Variable:
    """One variable as read: its name, the value in effect, and where it came from."""

    name: str
    value: str
    source: str  # "environment", "default" or "invalid"


@dataclass(frozen=True)
class Configuration:
    """What the environment configures: the settings (defaults where a value
    is bad), every problem (each naming its variable), the variables that
    look like ours but that nothing reads, and each variable's effective value."""

    settings: Settings
    problems: tuple[str, ...]
    unknown: tuple[str, ...]
    variables: tuple[Variable, ...]


class _Reader:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.read: dict[str, Variable] = {}

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.environ.get(name)
        if raw is None or raw == "":
            self.read.setdefault(name, Variable(name, shown(default), "default"))
            return default
        try:
            value = parse(raw)
        except ValueError as exc:
            # The value itself is not echoed: it may be a secret.
            self.problems.append(f"{name}: {exc}")
            self.read[name] = Variable(name, "(invalid)", "invalid")
            return default
        self.read[name] = Variable(name, shown(value), "environment")
        return value

    def either(self, names: tuple[str, str], parse: Callable[[str], T], default: T) -> T:
        """The first of ``names`` that is set (both count as read)."""
        first = self.get(names[0], parse, default)
        second = self.get(names[1], parse, default)
        return first if self.read[names[0]].source == "environment" else second


def unknown_variables(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """Our prefixes on variables no setting reads, each with the likeliest meant one."""
    found = []
    for name in sorted(environ):
        if not name.startswith(PREFIXES) or name in known:
            continue
        if _SERVICE_LINK.match(name) or (
            name.endswith("_PORT") and _SERVICE_LINK_PORT.match(environ[name])
        ):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        found.append(f"{name}: not a variable agentexec-operator reads{hint}")
    return found


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build the settings from environment variables; raise naming every bad one."""
    config = read_configuration(environ)
    if config.problems:
        raise SettingsError("; ".join(config.problems))
    return config.settings


def read_configuration(environ: Mapping[str, str]) -> Configuration:
    """Everything the environment says, and everything wrong with it; never raises."""
    env = _Reader(environ)
    d = TemporalSettings()
    temporal = TemporalSettings(
        address=env.get("TEMPORAL_ADDRESS", parse.address, d.address),
        namespace=env.get("TEMPORAL_NAMESPACE", parse.text, d.namespace),
        tls=env.get("TEMPORAL_TLS", parse.flag, None),
        tls_ca_file=env.get("TEMPORAL_TLS_CA_FILE", parse.existing_file, None),
        tls_cert_file=env.get("TEMPORAL_TLS_CERT_FILE", parse.existing_file, None),
        tls_key_file=env.get("TEMPORAL_TLS_KEY_FILE", parse.existing_file, None),
        tls_server_name=env.get("TEMPORAL_TLS_SERVER_NAME", parse.text, None),
        api_key_file=env.get("TEMPORAL_API_KEY_FILE", parse.existing_file, None),
        connect_timeout=env.get(
            "TEMPORAL_CONNECT_TIMEOUT_SECONDS", parse.seconds, d.connect_timeout
        ),
        rpc_timeout=env.get("TEMPORAL_RPC_TIMEOUT_SECONDS", parse.seconds, d.rpc_timeout),
        probe_interval=env.get("TEMPORAL_PROBE_INTERVAL_SECONDS", parse.seconds, d.probe_interval),
        probe_interval_disconnected=env.get(
            "TEMPORAL_PROBE_INTERVAL_DISCONNECTED_SECONDS",
            parse.seconds,
            d.probe_interval_disconnected,
        ),
        probe_timeout=env.get("TEMPORAL_PROBE_TIMEOUT_SECONDS", parse.seconds, d.probe_timeout),
        down_after=env.get("TEMPORAL_DOWN_AFTER_SECONDS", parse.seconds_or_zero, d.down_after),
        backoff_base=env.get("TEMPORAL_BACKOFF_BASE_SECONDS", parse.seconds, d.backoff_base),
        backoff_max=env.get("TEMPORAL_BACKOFF_MAX_SECONDS", parse.seconds, d.backoff_max),
        backoff_jitter=env.get("TEMPORAL_BACKOFF_JITTER", parse.fraction, d.backoff_jitter),
        circuit_threshold=env.get(
            "TEMPORAL_CIRCUIT_THRESHOLD", parse.positive_int, d.circuit_threshold
        ),
        circuit_backoff_max=env.get(
            "TEMPORAL_CIRCUIT_BACKOFF_MAX_SECONDS", parse.seconds, d.circuit_backoff_max
        ),
        redial_after_failures=env.get(
            "TEMPORAL_REDIAL_AFTER_FAILURES", parse.positive_int, d.redial_after_failures
        ),
        worker_grace=env.get("TEMPORAL_WORKER_GRACE_SECONDS", parse.seconds, d.worker_grace),
        settings_check_interval=env.get(
            "TEMPORAL_SETTINGS_CHECK_INTERVAL_SECONDS", parse.seconds, d.settings_check_interval
        ),
    )
    problems = env.problems
    if temporal.tls is False:
        # Never silently drop what was configured: plaintext with TLS files
        # or a server name is a mistake. An API key over plaintext is allowed
        # when said so (a local server behind a proxy that checks it).
        for name, value in (
            ("TEMPORAL_TLS_CA_FILE", temporal.tls_ca_file),
            ("TEMPORAL_TLS_CERT_FILE", temporal.tls_cert_file),
            ("TEMPORAL_TLS_SERVER_NAME", temporal.tls_server_name),
        ):
            if value is not None:
                problems.append(f"{name}: set, but TEMPORAL_TLS is false")
    if (temporal.tls_cert_file is None) != (temporal.tls_key_file is None):
        problems.append("TEMPORAL_TLS_CERT_FILE and TEMPORAL_TLS_KEY_FILE: set both or neither")
    if temporal.backoff_max < temporal.backoff_base:
        problems.append("TEMPORAL_BACKOFF_MAX_SECONDS: must be at least the backoff base")
    if temporal.circuit_backoff_max < temporal.backoff_max:
        problems.append(
            "TEMPORAL_CIRCUIT_BACKOFF_MAX_SECONDS: must be at least TEMPORAL_BACKOFF_MAX_SECONDS"
        )
    s = Settings()
    install = env.get("AGENTEXEC_INSTALL", parse.install, s.install)
    task_queue, runner_task_queue = build_task_queues(install)
    settings = dataclasses.replace(
        s,
        temporal=temporal,
        proxy=ProxySettings(
            http=env.either(("http_proxy", "HTTP_PROXY"), parse.proxy_url, None),
            https=env.either(("https_proxy", "HTTPS_PROXY"), parse.proxy_url, None),
            no_proxy=env.either(("no_proxy", "NO_PROXY"), str.strip, ""),
        ),
        install=install,
        task_queue=env.get("AGENTEXEC_TASK_QUEUE", parse.text, task_queue),
        runner_task_queue=env.get("AGENTEXEC_RUNNER_TASK_QUEUE", parse.text, runner_task_queue),
        drain_task_queues=env.get("AGENTEXEC_DRAIN_TASK_QUEUES", parse.names, s.drain_task_queues),
        runner_enabled=env.get("AGENTEXEC_RUNNER_ENABLED", parse.flag, s.runner_enabled),
        execution_task_queues=env.get(
            "AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE", parse.queues, s.execution_task_queues
        ),
        runner_task_queues=env.get(
            "AGENTEXEC_RUNNER_TASK_QUEUES", parse.names, s.runner_task_queues
        ),
        runner_agents=env.get("AGENTEXEC_RUNNER_AGENTS", parse.names, s.runner_agents),
        runner_max_concurrent=env.get(
            "AGENTEXEC_RUNNER_MAX_CONCURRENT", parse.positive_int, s.runner_max_concurrent
        ),
        # Not parse.existing_file: the runner checks it (and says what is wrong with it)
        # when it starts; the operator without a runner never reads it.
        providers_file=env.get("AGENTEXEC_PROVIDERS_FILE", parse.path, s.providers_file),
        payload_keys_dir=env.get("AGENTEXEC_PAYLOAD_KEYS_DIR", parse.directory, s.payload_keys_dir),
        payload_key_id=env.get("AGENTEXEC_PAYLOAD_KEY_ID", parse.text, s.payload_key_id),
        mcp_servers_file=env.get("AGENTEXEC_MCP_SERVERS_FILE", parse.path, s.mcp_servers_file),
        runner_heartbeat_timeout=env.get(
            "AGENTEXEC_RUNNER_HEARTBEAT_TIMEOUT_SECONDS",
            parse.whole_seconds,
            s.runner_heartbeat_timeout,
        ),
        http_port=env.get("AGENTEXEC_HTTP_PORT", parse.port, s.http_port),
        metrics_secure=env.get("AGENTEXEC_METRICS_SECURE", parse.flag, s.metrics_secure),
        metrics_port=env.get("AGENTEXEC_METRICS_PORT", parse.port, s.metrics_port),
        metrics_cert_file=env.get(
            "AGENTEXEC_METRICS_CERT_FILE", parse.existing_file, s.metrics_cert_file
        ),
        metrics_key_file=env.get(
            "AGENTEXEC_METRICS_KEY_FILE", parse.existing_file, s.metrics_key_file
        ),
        watch_namespaces=env.get(
            "AGENTEXEC_WATCH_NAMESPACES", parse.namespaces, s.watch_namespaces
        ),
        queue_ttl=env.get("AGENTEXEC_QUEUE_TTL_SECONDS", parse.seconds, s.queue_ttl),
        ttl_seconds_after_finished=env.get(
            "AGENTEXEC_TTL_SECONDS_AFTER_FINISHED", parse.ttl, s.ttl_seconds_after_finished
        ),
        start_rate=env.get("AGENTEXEC_START_RATE", parse.rate, s.start_rate),
        delete_rate=env.get("AGENTEXEC_DELETE_RATE", parse.rate, s.delete_rate),
        reconcile_workers=env.get(
            "AGENTEXEC_RECONCILE_WORKERS", parse.positive_int, s.reconcile_workers
        ),
        condition_sync_interval=env.get(
            "AGENTEXEC_CONDITION_SYNC_SECONDS", parse.seconds, s.condition_sync_interval
        ),
        condition_sync_rate=env.get(
            "AGENTEXEC_CONDITION_SYNC_RATE", parse.rate, s.condition_sync_rate
        ),
        sweep_interval=env.get("AGENTEXEC_SWEEP_SECONDS", parse.seconds, s.sweep_interval),
        no_runner_seconds=env.get(
            "AGENTEXEC_NO_RUNNER_SECONDS", parse.seconds, s.no_runner_seconds
        ),
        report_timeout=env.get("AGENTEXEC_REPORT_TIMEOUT_SECONDS", parse.seconds, s.report_timeout),
        progress_interval=env.get(
            "AGENTEXEC_PROGRESS_INTERVAL_SECONDS", parse.seconds, s.progress_interval
        ),
        max_disruptions=env.get(
            "AGENTEXEC_MAX_DISRUPTIONS", parse.non_negative_int, s.max_disruptions
        ),
        leader_election=env.get("AGENTEXEC_LEADER_ELECTION", parse.flag, s.leader_election),
        leader_election_namespace=env.get(
            "AGENTEXEC_LEADER_ELECTION_NAMESPACE", parse.text, s.leader_election_namespace
        ),
        leader_election_name=env.get(
            "AGENTEXEC_LEADER_ELECTION_NAME", parse.text, s.leader_election_name
        ),
        leader_election_lease_seconds=env.get(
            "AGENTEXEC_LEADER_ELECTION_LEASE_SECONDS",
            parse.seconds,
            s.leader_election_lease_seconds,
        ),
        pod_name=env.get("POD_NAME", parse.text, s.pod_name),
        pod_namespace=env.get("POD_NAMESPACE", parse.text, s.pod_namespace),
        log_level=env.get(
            "LOG_LEVEL", parse.choice("DEBUG", "INFO", "WARNING", "ERROR"), s.log_level
        ),
        log_format=env.get("LOG_FORMAT", parse.choice("json", "text"), s.log_format),
    )
    if bool(environ.get("AGENTEXEC_PAYLOAD_KEYS_DIR")) != bool(
        environ.get("AGENTEXEC_PAYLOAD_KEY_ID")
    ):
        problems.append(
            "AGENTEXEC_PAYLOAD_KEYS_DIR and AGENTEXEC_PAYLOAD_KEY_ID: set both (payloads "
            "encrypted with that key) or neither"
        )
    if (settings.metrics_cert_file is None) != (settings.metrics_key_file is None):
        problems.append(
            "AGENTEXEC_METRICS_CERT_FILE and AGENTEXEC_METRICS_KEY_FILE: set both or neither"
        )
    if settings.metrics_secure and settings.metrics_port == settings.http_port:
        problems.append("AGENTEXEC_METRICS_PORT: must differ from AGENTEXEC_HTTP_PORT")
    return Configuration(
        settings=settings,
        problems=tuple(problems),
        unknown=tuple(unknown_variables(environ, set(env.read))),
        variables=tuple(env.read.values()),
    )
