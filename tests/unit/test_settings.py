from __future__ import annotations

from pathlib import Path

import pytest

from agentexec.settings import SettingsError, load_settings


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
    assert s.ttl_seconds_after_finished is None  # finished executions are kept
    assert s.watch_namespaces == ()
    # Agents run in `agentexec-operator runner`, not in the operator (#13).
    assert s.runner_enabled is False
    assert s.runner_queues == ("agentexec-runner",)
    assert (s.runner_agents, s.runner_max_concurrent) == ((), 16)
    assert s.runner_heartbeat_timeout == 30.0
    assert (s.start_rate, s.delete_rate) == (200.0, 50.0)


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
