"""The README cannot rot: its proxy snippets are the files the tests run, and its key table
names every config key."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx2
import pytest
from pydantic import BaseModel

from relay.config import Config
from tests.e2e.stack import replace_exactly
from tests.process import RelayProcess, free_port

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "name", ["nginx.conf", "Caddyfile", "haproxy.cfg", "haproxy-auth.lua", "traefik.yml"]
)
def test_readme_snippets_are_the_deploy_files(name: str) -> None:
    """Each snippet under <!-- deploy/NAME --> is that file, byte for byte."""
    match = re.search(rf"<!-- deploy/{re.escape(name)} -->\n```\w+\n(.*?)```", README, re.DOTALL)
    assert match, f"README has no snippet for deploy/{name}"
    assert match.group(1) == (ROOT / "deploy" / name).read_text()


def test_readme_documents_every_config_key() -> None:
    """Every key appears in the README's configuration table."""
    for section_name, field in Config.model_fields.items():
        section = field.annotation
        assert isinstance(section, type) and issubclass(section, BaseModel)
        for key in section.model_fields:
            assert f"`{section_name}.{key}" in README, f"{section_name}.{key}"


def test_the_oauth2_proxy_guides_config_starts_as_written(tmp_path: Path) -> None:
    """docs/migrating-from-oauth2-proxy.md's relay config, with the two secrets in the
    environment as it says, and only the provider's host and the port changed (nothing may
    leave this machine): the relay starts and answers under the guide's prefix."""
    guide = (ROOT / "docs" / "migrating-from-oauth2-proxy.md").read_text()
    match = re.search(r"A relay config for it:\n\n```toml\n(.*?)```", guide, re.DOTALL)
    assert match, "the guide's config block moved"
    dead = free_port()  # a provider that does not answer: the relay still starts
    config = tmp_path / "relay.toml"
    config.write_text(replace_exactly(match.group(1), "idp.example.com", f"127.0.0.1:{dead}", 1))
    port = free_port()
    env = {
        "RELAY_PROVIDER__CLIENT_SECRET": "a-client-secret-from-the-provider",
        "RELAY_SESSION__SECRET": "s" * 48,
        "RELAY_SERVER__PORT": str(port),
    }
    relay = RelayProcess(config, env=env, cwd=tmp_path)
    relay.start()
    try:
        answer = httpx2.get(f"http://127.0.0.1:{port}/oauth2/healthz", timeout=10)
        assert answer.json() == {"status": "ok"}
    finally:
        assert relay.stop() == -signal.SIGTERM  # as uvicorn ends on the signal it caught
    assert "relay.stopped" in [e["event"] for e in relay.events()]
