"""The README cannot rot: its proxy snippets are the files the tests run, and its key table
names every config key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from relay.config import Config

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
