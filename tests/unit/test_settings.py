from __future__ import annotations

from pathlib import Path

import pytest

from agentexec.settings import SettingsError, load_settings, read_configuration, shown


def test_defaults() -> None:
    s = load_settings({})
    assert s.temporal.address == "localhost:7233"
    assert s.temporal.namespace == "default"
    assert (s.temporal.backoff_base, s.temporal.backoff_max) == (1.0, 30.0)
    assert s.temporal.circuit_threshold == 10
    assert s.temporal.circuit_backoff_max == 300.0
    assert s.temporal.down_after == 1.0
    assert s.task_queue == "agentexec-executions"
    assert s.runner_task_queue == "agentexec-runner"
    assert s.queue_ttl == 3600.0
    # Finished executions go a day after they finish, as a Job with a TTL (#21).
    assert s.ttl_seconds_after_finished == 86400
    assert s.metrics_secure is False
    assert s.watch_namespaces == ()
    # Agents run in `agentexec-operator runner`, not in the operator (#13).
    assert s.runner_enabled is False
    assert s.runner_queues == ("agentexec-runner",)
    assert (s.runner_agents, s.runner_max_concurrent) == ((), 16)
    assert s.runner_heartbeat_timeout == 30.0
    assert (s.start_rate, s.delete_rate) == (200.0, 50.0)
    assert s.max_disruptions == 10


def test_reads_the_environment(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret")
    s = load_settings(
        {
            "TEMPORAL_ADDRESS": "temporal.example:7233",
            "TEMPORAL_NAMESPACE": "prod",
            "TEMPORAL_API_KEY_FILE": str(key),
            "TEMPORAL_PROBE_INTERVAL_SECONDS": "0.5",
            "TEMPORAL_DOWN_AFTER_SECONDS": "0",
            "AGENTEXEC_WATCH_NAMESPACES": "b, a,,a",
            "AGENTEXEC_TTL_SECONDS_AFTER_FINISHED": "0",
            "AGENTEXEC_RUNNER_ENABLED": "true",
            "AGENTEXEC_RUNNER_TASK_QUEUES": "b, a,,b",
            "AGENTEXEC_RUNNER_AGENTS": "echo",
            "AGENTEXEC_RUNNER_MAX_CONCURRENT": "3",
            "AGENTEXEC_RUNNER_HEARTBEAT_TIMEOUT_SECONDS": "5",
            "AGENTEXEC_DELETE_RATE": "2.5",
            "AGENTEXEC_MAX_DISRUPTIONS": "0",
        }
    )
    assert s.temporal.address == "temporal.example:7233"
    assert s.temporal.namespace == "prod"
    assert s.temporal.api_key_file == key
    assert s.temporal.probe_interval == 0.5
    assert s.temporal.down_after == 0.0  # 0: the first failed probe
    assert s.watch_namespaces == ("a", "b")
    assert s.ttl_seconds_after_finished == 0  # 0 is "at once", not "off"
    assert s.runner_enabled is True
    assert s.runner_queues == ("b", "a")
    assert (s.runner_agents, s.runner_max_concurrent) == (("echo",), 3)
    assert s.runner_heartbeat_timeout == 5.0
    assert s.delete_rate == 2.5
    assert s.max_disruptions == 0  # every disruption fails the execution


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TEMPORAL_ADDRESS": "no-port"}, "TEMPORAL_ADDRESS"),
        ({"TEMPORAL_ADDRESS": "host:99999"}, "TEMPORAL_ADDRESS"),
        ({"TEMPORAL_NAMESPACE": "  "}, "TEMPORAL_NAMESPACE"),
        ({"TEMPORAL_PROBE_INTERVAL_SECONDS": "-1"}, "TEMPORAL_PROBE_INTERVAL_SECONDS"),
        ({"TEMPORAL_PROBE_TIMEOUT_SECONDS": "soon"}, "TEMPORAL_PROBE_TIMEOUT_SECONDS"),
        ({"TEMPORAL_DOWN_AFTER_SECONDS": "-1"}, "TEMPORAL_DOWN_AFTER_SECONDS"),
        ({"TEMPORAL_DOWN_AFTER_SECONDS": "nan"}, "TEMPORAL_DOWN_AFTER_SECONDS"),
        ({"TEMPORAL_BACKOFF_JITTER": "1.5"}, "TEMPORAL_BACKOFF_JITTER"),
        ({"TEMPORAL_CIRCUIT_THRESHOLD": "0"}, "TEMPORAL_CIRCUIT_THRESHOLD"),
        ({"TEMPORAL_TLS": "maybe"}, "TEMPORAL_TLS"),
        ({"TEMPORAL_TLS_CA_FILE": "/nonexistent/ca.pem"}, "TEMPORAL_TLS_CA_FILE"),
        ({"AGENTEXEC_HTTP_PORT": "0"}, "AGENTEXEC_HTTP_PORT"),
        ({"AGENTEXEC_RUNNER_MAX_CONCURRENT": "0"}, "AGENTEXEC_RUNNER_MAX_CONCURRENT"),
        (
            {"AGENTEXEC_RUNNER_HEARTBEAT_TIMEOUT_SECONDS": "0.5"},
            "AGENTEXEC_RUNNER_HEARTBEAT_TIMEOUT_SECONDS",
        ),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"AGENTEXEC_DELETE_RATE": "0"}, "AGENTEXEC_DELETE_RATE"),
        ({"AGENTEXEC_DELETE_RATE": "inf"}, "AGENTEXEC_DELETE_RATE"),
        ({"AGENTEXEC_START_RATE": "-5"}, "AGENTEXEC_START_RATE"),
        ({"AGENTEXEC_TTL_SECONDS_AFTER_FINISHED": "-1"}, "AGENTEXEC_TTL_SECONDS_AFTER_FINISHED"),
        ({"AGENTEXEC_TTL_SECONDS_AFTER_FINISHED": "1.5"}, "AGENTEXEC_TTL_SECONDS_AFTER_FINISHED"),
        ({"AGENTEXEC_TTL_SECONDS_AFTER_FINISHED": "soon"}, "AGENTEXEC_TTL_SECONDS_AFTER_FINISHED"),
        ({"TEMPORAL_ADDRESS": "http://temporal:7233"}, "TEMPORAL_ADDRESS"),
        ({"HTTPS_PROXY": "ftp://proxy:21"}, "HTTPS_PROXY"),
        ({"https_proxy": "http://proxy:port"}, "https_proxy"),
        ({"AGENTEXEC_METRICS_PORT": "70000"}, "AGENTEXEC_METRICS_PORT"),
        (
            {"AGENTEXEC_METRICS_SECURE": "true", "AGENTEXEC_METRICS_PORT": "8080"},
            "AGENTEXEC_METRICS_PORT",
        ),
        ({"AGENTEXEC_MAX_DISRUPTIONS": "-1"}, "AGENTEXEC_MAX_DISRUPTIONS"),
        ({"AGENTEXEC_MAX_DISRUPTIONS": "many"}, "AGENTEXEC_MAX_DISRUPTIONS"),
        (
            {"TEMPORAL_BACKOFF_BASE_SECONDS": "60", "TEMPORAL_BACKOFF_MAX_SECONDS": "30"},
            "TEMPORAL_BACKOFF_MAX_SECONDS",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=f"^{names}"):
        load_settings(env)


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "tls.crt"
    cert.write_text("x")
    with pytest.raises(SettingsError, match="TEMPORAL_TLS_KEY_FILE"):
        load_settings({"TEMPORAL_TLS_CERT_FILE": str(cert)})


def test_bad_values_are_not_echoed() -> None:
    # The variable is named; its value, which may be a secret, is not.
    with pytest.raises(SettingsError) as info:
        load_settings({"TEMPORAL_PROBE_TIMEOUT_SECONDS": "sk-live-123"})
    assert "TEMPORAL_PROBE_TIMEOUT_SECONDS" in str(info.value)
    assert "sk-live-123" not in str(info.value)


def test_an_api_key_means_tls_unless_tls_is_turned_off_explicitly(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("secret")
    assert load_settings({"TEMPORAL_API_KEY_FILE": str(key)}).temporal.uses_tls
    plain = load_settings({"TEMPORAL_API_KEY_FILE": str(key), "TEMPORAL_TLS": "false"})
    assert not plain.temporal.uses_tls
    assert not load_settings({}).temporal.uses_tls


def test_a_server_name_alone_turns_tls_on() -> None:
    s = load_settings({"TEMPORAL_TLS_SERVER_NAME": "temporal.example"})
    assert s.temporal.uses_tls
    assert s.temporal.tls_server_name == "temporal.example"


def test_tls_settings_with_tls_turned_off_are_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(SettingsError, match=r"^TEMPORAL_TLS_SERVER_NAME: set, but TEMPORAL_TLS"):
        load_settings({"TEMPORAL_TLS": "false", "TEMPORAL_TLS_SERVER_NAME": "t.example"})
    with pytest.raises(SettingsError, match=r"^TEMPORAL_TLS_CA_FILE: set, but TEMPORAL_TLS"):
        load_settings({"TEMPORAL_TLS": "false", "TEMPORAL_TLS_CA_FILE": str(ca)})


def test_never_keeps_finished_executions() -> None:
    settings = load_settings({"AGENTEXEC_TTL_SECONDS_AFTER_FINISHED": "never"})
    assert settings.ttl_seconds_after_finished is None


@pytest.mark.parametrize(
    ("address", "said"),
    [
        ("http://temporal:7233", "drop 'http://'"),
        ("https://temporal:7233", "drop 'https://' (TLS is TEMPORAL_TLS=true)"),
    ],
)
def test_a_url_is_not_a_temporal_address(address: str, said: str) -> None:
    """An http:// address was taken for host "http://temporal" (issue #21)."""
    with pytest.raises(SettingsError) as info:
        load_settings({"TEMPORAL_ADDRESS": address})
    assert str(info.value) == f"TEMPORAL_ADDRESS: must be host:port, without a scheme: {said}"


def test_every_problem_is_named_at_once() -> None:
    config = read_configuration(
        {"TEMPORAL_ADDRESS": "http://t:7233", "AGENTEXEC_HTTP_PORT": "0", "LOG_LEVEL": "LOUD"}
    )
    assert [p.split(":")[0] for p in config.problems] == [
        "TEMPORAL_ADDRESS", "AGENTEXEC_HTTP_PORT", "LOG_LEVEL",
    ]  # fmt: skip
    with pytest.raises(SettingsError, match=r"^TEMPORAL_ADDRESS: .*; AGENTEXEC_HTTP_PORT: .*LOG"):
        load_settings(
            {"TEMPORAL_ADDRESS": "http://t:7233", "AGENTEXEC_HTTP_PORT": "0", "LOG_LEVEL": "LOUD"}
        )


def test_variables_no_setting_reads_are_named_with_the_one_meant() -> None:
    config = read_configuration(
        {
            "AGENTEXEC_TTL_SECONDS_AFTER_FINISH": "60",
            "TEMPORAL_API_KEY": "sk-live-123",
            "AGENTEXEC_SOMETHING_ELSE": "1",
            # What the kubelet sets for Services named temporal and agentexec-metrics.
            "TEMPORAL_SERVICE_HOST": "10.0.0.1",
            "TEMPORAL_SERVICE_PORT": "7233",
            "TEMPORAL_SERVICE_PORT_GRPC": "7233",
            "TEMPORAL_PORT": "tcp://10.0.0.1:7233",
            "TEMPORAL_PORT_7233_TCP": "tcp://10.0.0.1:7233",
            "TEMPORAL_PORT_7233_TCP_PROTO": "tcp",
            "TEMPORAL_PORT_7233_TCP_PORT": "7233",
            "TEMPORAL_PORT_7233_TCP_ADDR": "10.0.0.1",
            "AGENTEXEC_METRICS_SERVICE_HOST": "10.0.0.2",
            "OTHER_TOOL_SETTING": "x",
        }
    )
    assert not config.problems  # running, they are warned about; --check-config fails
    assert config.unknown == (
        "AGENTEXEC_SOMETHING_ELSE: not a variable agentexec-operator reads",
        "AGENTEXEC_TTL_SECONDS_AFTER_FINISH: not a variable agentexec-operator reads; "
        "did you mean AGENTEXEC_TTL_SECONDS_AFTER_FINISHED?",
        "TEMPORAL_API_KEY: not a variable agentexec-operator reads; "
        "did you mean TEMPORAL_API_KEY_FILE?",
    )
    assert "sk-live-123" not in str(config.unknown)
    # A Temporal port variable that is no service link is ours to name.
    assert read_configuration({"TEMPORAL_PORT": "7233"}).unknown


def test_the_effective_configuration_says_where_each_value_came_from() -> None:
    config = read_configuration(
        {"TEMPORAL_NAMESPACE": "prod", "HTTPS_PROXY": "http://me:pa55@proxy:3128"}
    )
    variables = {v.name: v for v in config.variables}
    assert (variables["TEMPORAL_NAMESPACE"].value, variables["TEMPORAL_NAMESPACE"].source) == (
        "prod", "environment",
    )  # fmt: skip
    assert variables["TEMPORAL_ADDRESS"].source == "default"
    assert variables["HTTPS_PROXY"].value == "http://me:***@proxy:3128"
    assert "pa55" not in str(config.variables)
    bad = read_configuration({"TEMPORAL_PROBE_TIMEOUT_SECONDS": "sk-live-123"})
    assert {v.name: v.value for v in bad.variables}["TEMPORAL_PROBE_TIMEOUT_SECONDS"] == (
        "(invalid)"
    )
    assert "sk-live-123" not in str(bad)


def test_proxies_lower_case_wins_and_a_bare_host_is_http() -> None:
    proxy = load_settings(
        {"https_proxy": "proxy-a:3128", "HTTPS_PROXY": "http://proxy-b:3128",
         "HTTP_PROXY": "http://proxy-c:3128", "NO_PROXY": ".svc,localhost"}
    ).proxy  # fmt: skip
    assert (proxy.https, proxy.http, proxy.no_proxy) == (
        "http://proxy-a:3128", "http://proxy-c:3128", ".svc,localhost",
    )  # fmt: skip


def test_metrics_certificate_and_key_come_together(tmp_path: Path) -> None:
    cert = tmp_path / "tls.crt"
    cert.write_text("x")
    with pytest.raises(SettingsError, match="AGENTEXEC_METRICS_CERT_FILE and"):
        load_settings({"AGENTEXEC_METRICS_CERT_FILE": str(cert)})


def test_shown_values() -> None:
    assert (shown(None), shown(""), shown(True), shown(()), shown(("a", "b"))) == (
        "(unset)", "(unset)", "true", "(none)", "a,b",
    )  # fmt: skip
