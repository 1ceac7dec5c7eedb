"""The docs cannot rot: the proxy page's snippets are the files the tests run, the
configuration reference is written from the code, every link leads somewhere, the README stays
a front page that reaches every page, and the guides' configs start as written."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import typing
from pathlib import Path

import httpx2
import pytest
from pydantic import BaseModel

from relay.config import Config
from tests.e2e.stack import replace_exactly
from tests.process import RelayProcess, free_port

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


DOCS = ROOT / "docs"
PROXIES = (DOCS / "proxies.md").read_text()


@pytest.mark.parametrize(
    "name", ["nginx.conf", "Caddyfile", "haproxy.cfg", "haproxy-auth.lua", "traefik.yml"]
)
def test_the_proxy_pages_snippets_are_the_deploy_files(name: str) -> None:
    """Each snippet under <!-- deploy/NAME --> in docs/proxies.md is that file, byte for
    byte."""
    match = re.search(rf"<!-- deploy/{re.escape(name)} -->\n```\w+\n(.*?)```", PROXIES, re.DOTALL)
    assert match, f"docs/proxies.md has no snippet for deploy/{name}"
    assert match.group(1) == (ROOT / "deploy" / name).read_text()


def test_the_configuration_reference_is_written_from_the_code() -> None:
    """docs/configuration.md is what scripts/config-reference writes from relay/config.py,
    and names every key with a meaning."""
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config-reference"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    reference = (DOCS / "configuration.md").read_text()
    for section_name, field in Config.model_fields.items():
        section = field.annotation
        if typing.get_origin(section) is list:  # [[providers]]: the keys of [provider]
            assert f"## [[{section_name}]]" in reference
            continue
        assert isinstance(section, type) and issubclass(section, BaseModel)
        for key, spec in section.model_fields.items():
            assert f"| `{section_name}.{key}` |" in reference, f"{section_name}.{key}"
            assert spec.description, f"{section_name}.{key} has no docstring"


def test_the_readme_is_short_and_reaches_every_page() -> None:
    """The README stays a front page (under 300 lines), and links every page in docs/."""
    assert len(README.splitlines()) <= 300
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", README))
    assert linked == {page.name for page in DOCS.glob("*.md")}


def _anchors(text: str) -> set[str]:
    found, code = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            code = not code
        heading = re.match(r"^#{1,4} (.*)", line)
        if heading and not code:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower().replace("`", ""))
            found.add(slug.replace(" ", "-"))
    return found


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))]
)
def test_every_link_in_the_docs_leads_somewhere(page: str) -> None:
    """Relative links name files that exist, and anchors headings that exist there."""
    source = ROOT / page
    text = source.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve() if path else source
        assert resolved.exists(), f"{page}: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved.read_text()), f"{page}: {target}"


CONFIGS = {
    # The README's "ten minutes to a first deployment", step 3.
    "README.md": r"\*\*3\. Write `relay.toml`\*\*.*?```toml\n(.*?)```",
    "docs/migrating-from-oauth2-proxy.md": r"A relay config for it:\n\n```toml\n(.*?)```",
}


@pytest.mark.parametrize("page", list(CONFIGS))
def test_the_docs_configs_start_as_written(tmp_path: Path, page: str) -> None:
    """The README's first config and the oauth2-proxy guide's, with the two secrets in the
    environment as they say, and only the provider's host and the port changed (nothing may
    leave this machine): the relay starts and answers under the page's prefix."""
    match = re.search(CONFIGS[page], (ROOT / page).read_text(), re.DOTALL)
    assert match, f"{page}: the config block moved"
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
