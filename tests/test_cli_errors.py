"""Mistakes an operator makes end a command with one line naming the key, never a traceback;
`relay check-config --connect` finds them before a deploy does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import postgres_database
from tests.process import RELAY, free_port

CONFIG = """
[server]
port = {port}
public_url = "https://auth.example.com"
[provider]
issuer = "{issuer}"
client_id = "relay"
client_secret = "provider-secret-value"
[database]
url = "{url}"
[session]
secret = "0123456789abcdef0123456789abcdef-x"
[access]
email_domains = ["*"]
"""
DEAD_DB = "postgresql+psycopg://relay:hunter2-secret@127.0.0.1:{port}/relay"


def run(tmp_path: Path, *args: str, url: str, issuer: str = "https://127.0.0.1:9") -> tuple:
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG.format(port=free_port(), issuer=issuer, url=url))
    result = subprocess.run(
        [RELAY, *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr.strip().splitlines()


@pytest.mark.parametrize("command", ["serve", "migrate", "prune"])
def test_an_unreachable_database_is_one_line(tmp_path: Path, command: str) -> None:
    """serve, migrate and prune against a database nobody answers for: exit 1 and one line
    naming database.url with the password masked and the driver's reason."""
    code, _, err = run(tmp_path, command, url=DEAD_DB.format(port=free_port()))
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith("relay: cannot use the database at postgresql+psycopg://relay:***@")
    assert "(database.url)" in err[0] and "Connection refused" in err[0]
    assert "hunter2-secret" not in err[0]


def test_check_config_connect_names_each_unreachable_part(tmp_path: Path) -> None:
    """--connect tries the database and the provider and says, per key, what is wrong."""
    code, out, err = run(
        tmp_path, "check-config", "--connect", url=DEAD_DB.format(port=free_port())
    )
    assert code == 1
    assert out.startswith("{")  # the resolved config first, as without --connect
    assert len(err) == 2, err
    assert "(database.url)" in err[0]
    assert err[1].startswith(
        "relay: cannot use the provider (provider.issuer = https://127.0.0.1:9)"
    )
    assert ".well-known/openid-configuration" in err[1]
    assert "hunter2-secret" not in out + "".join(err)


@pytest.mark.postgres
def test_check_config_connect_says_when_the_schema_is_behind(tmp_path: Path) -> None:
    """A reachable PostgreSQL database without the schema: the line says what to run."""
    with postgres_database() as url:
        _, _, err = run(tmp_path, "check-config", "--connect", url=url)
    assert "run `relay migrate --config PATH` first" in err[0]


@pytest.mark.postgres
def test_https_against_a_plain_http_provider_says_so(tmp_path: Path) -> None:
    """An https issuer whose server speaks plain http: the line shows the URL and the hint."""
    with postgres_database() as url:
        # PostgreSQL's port answers TLS with a refusal of its own: any non-TLS server will do.
        _, _, err = run(
            tmp_path, "check-config", "--connect", url=url, issuer="https://127.0.0.1:5432"
        )
    provider = [line for line in err if "provider.issuer" in line]
    assert provider and "https://127.0.0.1:5432/.well-known/openid-configuration" in provider[0]
