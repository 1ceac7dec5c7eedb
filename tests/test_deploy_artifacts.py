"""The deployment artifacts in deploy/ checked as far as this machine allows: the systemd
unit by systemd-analyze, the Kubernetes example against the relay's own config rules and
routes, the container file against the repository. (No Docker engine or cluster runs here:
the image is not built and the manifests are not applied.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.app import create_app
from relay.config import config_from_mapping
from tests.e2e.stack import self_signed_certificate

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit, with the install prefix /opt/oidc-relay
    pointed at this checkout's virtualenv (the one path that differs per machine)."""
    unit = (DEPLOY / "systemd" / "oidc-relay.service").read_text()
    venv = Path(sys.executable).parent.parent
    copy = tmp_path / "oidc-relay.service"
    copy.write_text(unit.replace("/opt/oidc-relay", str(venv)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ExecStart=/opt/oidc-relay/bin/relay serve --config /etc/oidc-relay/relay.toml" in unit


def manifests() -> dict[str, dict[str, Any]]:
    text = (DEPLOY / "kubernetes" / "oidc-relay.yaml").read_text()
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text)}


def test_kubernetes_config_is_valid_with_the_secret_it_names() -> None:
    """The ConfigMap's relay.toml is a valid config once the Secret's three variables are
    set, and the README's install comment names exactly those."""
    docs = manifests()
    toml = tomllib.loads(docs["ConfigMap"]["data"]["relay.toml"])
    env = {
        "RELAY_SESSION__SECRET": "k8s-session-secret-" + "x" * 20,
        "RELAY_PROVIDER__CLIENT_SECRET": "issued-by-the-provider",
        "RELAY_DATABASE__URL": "postgresql+psycopg://relay:pw@postgres:5432/relay",
    }
    config = config_from_mapping(toml, env)
    header = (DEPLOY / "kubernetes" / "oidc-relay.yaml").read_text().split("apiVersion")[0]
    assert set(re.findall(r"RELAY_[A-Z_]+", header)) == set(env)
    assert config.server.internal_port == 9180


def test_kubernetes_probes_match_the_relay() -> None:
    """Two replicas; probes on the internal port at paths the relay serves there; the drain
    outlasts one readiness period; the grace period covers drain and stop; the Job
    migrates with the same config and secret."""
    docs = manifests()
    toml = tomllib.loads(docs["ConfigMap"]["data"]["relay.toml"])
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 2
    pod = deployment["template"]["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["internal"] == toml["server"]["internal_port"]
    assert ports["http"] == toml["server"]["port"]
    config = config_from_mapping(
        toml,
        {
            "RELAY_SESSION__SECRET": "k8s-session-secret-" + "x" * 20,
            "RELAY_PROVIDER__CLIENT_SECRET": "issued",
            "RELAY_DATABASE__URL": "postgresql+psycopg://relay:pw@postgres/relay",
        },
    )
    paths = {r.path for r in create_app(config).routes[0].routes}
    prefix = config.server.path_prefix
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "internal"
        assert get["path"].removeprefix(prefix) in paths and get["path"].startswith(prefix)
    assert container["readinessProbe"]["httpGet"]["path"] == prefix + "/readyz"
    period = container["readinessProbe"]["periodSeconds"]
    assert config.server.shutdown_delay >= period
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > config.server.shutdown_delay + config.server.shutdown_timeout
    job = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][0] == "migrate" and job["envFrom"] == container["envFrom"]
    assert job["volumeMounts"] == container["volumeMounts"]


def test_container_file_copies_what_exists_and_runs_serve() -> None:
    """Every COPY source exists in the repository, and the image runs `relay serve` on the
    config path the Kubernetes example mounts."""
    text = (DEPLOY / "container" / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["relay"]' in text
    assert 'CMD ["serve", "--config", "/etc/oidc-relay/relay.toml"]' in text
    [container] = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["volumeMounts"][0]["mountPath"] == "/etc/oidc-relay"


DEBIAN_HAPROXY = Path("/etc/haproxy/haproxy.cfg")


@pytest.mark.skipif(
    shutil.which("haproxy") is None or not DEBIAN_HAPROXY.exists(), reason="no Debian haproxy"
)
def test_haproxy_recipe_is_valid_after_debians_own_config(tmp_path: Path) -> None:
    """haproxy -c accepts Debian's /etc/haproxy/haproxy.cfg with deploy/haproxy.cfg appended,
    as the recipe's header says to install it (only the certificate and Lua paths replaced;
    the end-to-end tests run it behind a global section of their own)."""
    cert, key = self_signed_certificate(tmp_path)
    pem = tmp_path / "app.pem"
    pem.write_bytes(cert.read_bytes() + key.read_bytes())
    recipe = (DEPLOY / "haproxy.cfg").read_text()
    recipe = recipe.replace("/etc/haproxy/certs/app.example.com.pem", str(pem))
    recipe = recipe.replace("/etc/haproxy/haproxy-auth.lua", str(DEPLOY / "haproxy-auth.lua"))
    config = tmp_path / "haproxy.cfg"
    config.write_text(DEBIAN_HAPROXY.read_text() + "\n" + recipe)
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr
