"""`agentexec-operator --check-config` and a start without credentials, on the
console as a person types them (issue #21): every problem named, the
effective configuration printed, exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from localenv.kube import ControlPlane

CONSOLE = str(Path(sys.executable).parent / "agentexec-operator")


def console(
    *args: str, env: dict[str, str], home: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The console command with only ``env`` (and a HOME of its own, so no
    ~/.kube/config of this machine is found)."""
    return subprocess.run(
        [CONSOLE, *args],
        env={"PATH": str(Path(sys.executable).parent), "HOME": str(home), **env},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_check_config_names_a_url_a_typo_and_missing_credentials(tmp_path: Path) -> None:
    checked = console(
        "--check-config",
        env={
            "TEMPORAL_ADDRESS": "http://temporal.example:7233",
            "AGENTEXEC_TTL_SECONDS_AFTER_FINISH": "60",
            "TEMPORAL_NAMESPACE": "prod",
        },
        home=tmp_path,
    )
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stdout + checked.stderr
    problems = checked.stderr.splitlines()
    assert problems[0] == "agentexec-operator: the configuration has 3 problem(s):"
    assert problems[1:] == [
        "  TEMPORAL_ADDRESS: must be host:port, without a scheme: drop 'http://'",
        "  AGENTEXEC_TTL_SECONDS_AFTER_FINISH: not a variable agentexec-operator reads; "
        "did you mean AGENTEXEC_TTL_SECONDS_AFTER_FINISHED?",
        "  no Kubernetes credentials: not in a pod (no service account token at "
        "/var/run/secrets/kubernetes.io/serviceaccount/token) and no kubeconfig "
        "(KUBECONFIG unset, no ~/.kube/config)",
    ]
    # The effective configuration: what was set, and the defaults in force.
    lines = {line.split()[0]: line.split()[1:] for line in checked.stdout.splitlines()[1:]}
    assert lines["TEMPORAL_NAMESPACE"] == ["prod"]
    assert lines["TEMPORAL_ADDRESS"] == ["(invalid)"]
    assert lines["AGENTEXEC_TTL_SECONDS_AFTER_FINISHED"] == ["86400", "(default)"]
    assert "configuration ok" not in checked.stdout


def test_check_config_passes_with_credentials_and_says_where_they_point(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    checked = console(
        "--check-config",
        env={"KUBECONFIG": str(control_plane.kubeconfig), "TEMPORAL_ADDRESS": "temporal:7233"},
        home=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[-2:] == [
        f"Kubernetes: {control_plane.url} (kubeconfig)",
        "configuration ok",
    ]
    assert checked.stderr == ""


@pytest.mark.parametrize(
    ("kubeconfig", "said"),
    [
        (None, "no Kubernetes credentials: not in a pod"),
        ("missing", "the kubeconfig cannot be used (FileNotFoundError"),
        ("no-context", "the kubeconfig cannot be used (LoginError: Current context is not set"),
    ],
)
def test_starting_without_credentials_says_so_in_one_line(
    tmp_path: Path, kubeconfig: str | None, said: str
) -> None:
    env = {"TEMPORAL_ADDRESS": "127.0.0.1:1", "LOG_FORMAT": "text"}
    if kubeconfig == "missing":
        env["KUBECONFIG"] = str(tmp_path / "nonexistent")
    elif kubeconfig == "no-context":
        (tmp_path / "config").write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
        env["KUBECONFIG"] = str(tmp_path / "config")
    started = console(env=env, home=tmp_path)
    assert started.returncode == 2
    assert "Traceback" not in started.stderr, started.stderr
    assert started.stderr.startswith("agentexec-operator: no"), started.stderr
    assert said in started.stderr
    # The same through --check-config.
    checked = console("--check-config", env=env, home=tmp_path)
    assert checked.returncode == 2
    assert said in checked.stderr


def test_runner_check_config_names_a_provider_key_that_is_not_mounted(tmp_path: Path) -> None:
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        "providers:\n  openai:\n    baseURL: https://api.openai.com/v1\n"
        "    apiKeyFile: /var/run/agentexec/providers/openai/apiKey\n"
    )
    env = {"AGENTEXEC_PROVIDERS_FILE": str(providers), "AGENTEXEC_RUNNER_AGENTS": "chat",
           "AGENTEXEC_RUNNER_MAX_CONCURENT": "4"}  # fmt: skip
    checked = console("runner", "--check-config", env=env, home=tmp_path)
    assert checked.returncode == 2
    assert "Traceback" not in checked.stderr
    assert checked.stderr.splitlines()[1:] == [
        "  AGENTEXEC_RUNNER_MAX_CONCURENT: not a variable agentexec-operator reads; "
        "did you mean AGENTEXEC_RUNNER_MAX_CONCURRENT?",
        "  agent 'chat': provider 'openai': apiKeyFile "
        "'/var/run/agentexec/providers/openai/apiKey' cannot be read (No such file or "
        "directory); is it mounted?",
    ]
    assert "AGENTEXEC_PROVIDERS_FILE" in checked.stdout
