"""Secure metrics (issue #21): /metrics and /statusz over HTTPS, for bearer
tokens the real API server authenticates (TokenReview) and authorizes
(SubjectAccessReview), with the chart's RBAC, as controller-runtime does."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

from localenv.helm import CHART, Helm
from localenv.kube import ControlPlane
from localenv.procs import free_port
from localenv.temporal import TemporalDevServer
from tests.e2e.test_chart import FIXTURES, NO_CRDS, service_account_kubeconfig
from tests.support.operator import OperatorProcess

RELEASE = "sec"
FULLNAME = f"{RELEASE}-agentexec-operator"


def scrape(url: str, token: str | None, context: ssl.SSLContext) -> tuple[int, str, str]:
    """(status, body, WWW-Authenticate) of one GET."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return int(answer.status), answer.read().decode(), ""
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(), err.headers.get("WWW-Authenticate", "")


def test_metrics_are_refused_without_a_token_and_served_with_the_service_monitors(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    crd: None,
    tmp_path: Path,
) -> None:
    control_plane.kubectl("apply", "--server-side", "-f", str(FIXTURES / "monitoring-crds.yaml"))
    helm = Helm(control_plane, tmp_path / "helm")
    helm.run(
        "install", RELEASE, str(CHART), "-n", namespace, *NO_CRDS,
        "--set", f"watchNamespaces={{{namespace}}}", "--set", "serviceMonitor.enabled=true",
    )  # fmt: skip
    # The chart's defaults: no NetworkPolicy, so secure metrics are on.
    deploy = control_plane.kubectl_json("get", "deploy", FULLNAME, "-n", namespace)
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]  # type: ignore[index]
    }
    assert env["AGENTEXEC_METRICS_SECURE"] == "true"
    # The operator as the chart's ServiceAccount: its RBAC must allow the reviews.
    kubeconfig = service_account_kubeconfig(control_plane, namespace, FULLNAME, tmp_path / "kc")
    port = free_port()
    operator = OperatorProcess(
        tmp_path / "op", kubeconfig, temporal.address, namespace,
        {"AGENTEXEC_METRICS_SECURE": "true", "AGENTEXEC_METRICS_PORT": str(port),
         "AGENTEXEC_LEADER_ELECTION_NAME": FULLNAME,
         "AGENTEXEC_LEADER_ELECTION_NAMESPACE": namespace},
    )  # fmt: skip
    operator.start()
    try:
        # The self-signed certificate: what the ServiceMonitor's
        # insecureSkipVerify accepts; the token is what is checked.
        unverified = ssl.create_default_context()
        unverified.check_hostname = False
        unverified.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{port}"

        code, body, challenge = scrape(f"{url}/metrics", None, unverified)
        assert (code, challenge) == (401, 'Bearer realm="agentexec-operator"'), body
        assert scrape(f"{url}/metrics", "not-a-token", unverified)[0] == 401
        # A real token of a ServiceAccount not bound to the metrics-reader role.
        control_plane.kubectl("create", "serviceaccount", "nosy", "-n", namespace)
        nosy = control_plane.kubectl("create", "token", "nosy", "-n", namespace).stdout.strip()
        code, body, _ = scrape(f"{url}/statusz", nosy, unverified)
        assert code == 403, body
        assert f"system:serviceaccount:{namespace}:nosy may not get /statusz" in body

        # The token the installed ServiceMonitor sends: the one in the Secret
        # it names, of the ServiceAccount that Secret is for (the token
        # controller of kube-controller-manager fills it in a cluster; here the
        # API server issues a token for that ServiceAccount).
        monitor = control_plane.kubectl_json("get", "servicemonitor", FULLNAME, "-n", namespace)
        [endpoint] = monitor["spec"]["endpoints"]  # type: ignore[index]
        assert (endpoint["port"], endpoint["scheme"]) == ("https-metrics", "https")
        assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}
        credentials = endpoint["authorization"]["credentials"]
        secret = control_plane.kubectl_json("get", "secret", credentials["name"], "-n", namespace)
        assert secret["type"] == "kubernetes.io/service-account-token"
        account = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]  # type: ignore[index]
        scraper = control_plane.kubectl("create", "token", account, "-n", namespace).stdout.strip()
        code, body, _ = scrape(f"{url}/metrics", scraper, unverified)
        assert code == 200, body
        assert "agentexec_build_info{" in body
        code, body, _ = scrape(f"{url}/statusz", scraper, unverified)
        assert code == 200, body
        assert '"leader"' in body

        # The plain port keeps the kubelet's probes, and nothing else.
        plain = f"http://127.0.0.1:{operator.http_port}"
        assert scrape(f"{plain}/healthz", None, unverified)[0] == 200
        assert scrape(f"{plain}/metrics", None, unverified)[0] == 404
        assert scrape(f"{plain}/statusz", None, unverified)[0] == 404
        assert scraper not in operator.log()
        assert nosy not in operator.log()
    finally:
        operator.stop()
