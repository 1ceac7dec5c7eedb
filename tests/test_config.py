"""Config: TOML + RELAY_<SECTION>__<KEY>, durations, and every mistake named by its key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from relay.cli import main
from relay.config import Config, ConfigError, config_from_mapping, load_config

GOOD: dict[str, Any] = {
    "server": {"public_url": "https://auth.example.com"},
    "provider": {
        "issuer": "https://idp.example.com",
        "client_id": "relay",
        "client_secret": "provider-secret-value",
    },
    "session": {"secret": "s" * 32},
    "access": {"email_domains": ["*"]},
}


def with_(section: str, **values: Any) -> dict[str, Any]:
    data = {name: dict(body) for name, body in GOOD.items()}
    data.setdefault(section, {}).update(values)
    return data


def errors(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(data, env or {})
    return caught.value.lines


def test_minimal_config_has_documented_defaults() -> None:
    """Only public_url, issuer, client id/secret and the session secret are required."""
    config = config_from_mapping(GOOD, {})
    assert config.database.url == "sqlite+aiosqlite:///relay.db"
    assert config.provider.scopes == ["openid", "email", "profile"]
    assert config.server.redirect_uri == "https://auth.example.com/callback"
    assert config.session.cookie_secure is True
    assert config.logging.format == "json"


@pytest.mark.parametrize(
    ("value", "seconds"), [("90s", 90), ("15m", 900), ("8h", 28800), ("7d", 604800), (45, 45)]
)
def test_durations(value: Any, seconds: int) -> None:
    """Durations are "90s", "15m", "8h", "7d" or whole seconds."""
    config = config_from_mapping(with_("session", pending_lifetime=value), {})
    assert config.session.pending_lifetime == seconds


def test_bad_duration_names_the_key() -> None:
    """A duration that does not parse is reported against its key."""
    [line] = errors(with_("session", idle_timeout="eight hours"))
    assert line.startswith("session.idle_timeout: ")


def test_short_secret_is_rejected() -> None:
    """session.secret shorter than 32 characters stops startup."""
    [line] = errors(with_("session", secret="short"))
    assert line.startswith("session.secret: must be at least 32 characters: generate one with")


def test_missing_issuer_is_rejected() -> None:
    """No provider.issuer stops startup, naming the key."""
    data = with_("provider")
    del data["provider"]["issuer"]
    assert errors(data) == ["provider.issuer: is required"]


@pytest.mark.parametrize(
    ("section", "key", "url"),
    [
        ("server", "public_url", "http://auth.example.com"),
        ("provider", "issuer", "http://idp.example.com"),
    ],
)
def test_plain_http_outside_localhost_is_rejected(section: str, key: str, url: str) -> None:
    """public_url and issuer must be https unless they are on localhost."""
    [line] = errors(with_(section, **{key: url}))
    assert line.startswith(f"{section}.{key}: must use https")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_plain_http_on_localhost_is_allowed(host: str) -> None:
    """Local development may use http on loopback addresses."""
    data = with_("server", public_url=f"http://{host}:4180")
    data["provider"]["issuer"] = f"http://{host}:9000"
    data["session"]["cookie_secure"] = False
    config = config_from_mapping(data, {})
    assert config.server.public_url == f"http://{host}:4180"


def test_every_error_is_reported_at_once() -> None:
    """Several mistakes give several lines, one per key."""
    data = with_("session", secret="short", cookie_name="bad name!")
    data["server"]["public_url"] = "ftp://x"
    data["surprise"] = {}
    lines = errors(data)
    keys = sorted(line.split(":")[0] for line in lines)
    assert keys == ["server.public_url", "session.cookie_name", "session.secret", "surprise"]


def test_environment_overrides_file() -> None:
    """RELAY_<SECTION>__<KEY> wins over the file; lists are JSON."""
    env = {
        "RELAY_PROVIDER__CLIENT_SECRET": "from-the-environment",
        "RELAY_REDIRECTS__ALLOWED_HOSTS": '["app.example.com", "*.example.org"]',
        "RELAY_SESSION__IDLE_TIMEOUT": "2h",
        "UNRELATED": "x",
    }
    config = config_from_mapping(GOOD, env)
    assert config.provider.client_secret is not None
    assert config.provider.client_secret.get_secret_value() == "from-the-environment"
    assert config.redirects.allowed_hosts == ["app.example.com", "*.example.org"]
    assert config.session.idle_timeout == 7200


def test_environment_can_supply_a_missing_key() -> None:
    """A required key may come from the environment alone (e.g. the session secret)."""
    data = with_("session")
    del data["session"]["secret"]
    config = config_from_mapping(data, {"RELAY_SESSION__SECRET": "e" * 40})
    assert config.session.secret.get_secret_value() == "e" * 40


def test_confidential_client_needs_a_secret() -> None:
    """client_secret is required unless token_endpoint_auth_method is "none"."""
    data = with_("provider")
    del data["provider"]["client_secret"]
    [line] = errors(data)
    assert line.startswith("provider.client_secret: is required")
    data["provider"]["token_endpoint_auth_method"] = "none"
    assert config_from_mapping(data, {}).provider.client_secret is None


def test_weak_algorithms_cannot_be_allowed() -> None:
    """ "none" and HMAC algorithms are refused for ID tokens."""
    [line] = errors(with_("provider", allowed_algorithms=["RS256", "HS256", "none"]))
    assert line.startswith("provider.allowed_algorithms: ")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


GOOD_TOML = """
[server]
public_url = "https://auth.example.com"
[provider]
issuer = "https://idp.example.com"
client_id = "relay"
client_secret = "provider-secret-value"
[session]
secret = "0123456789abcdef0123456789abcdef-x"
[access]
email_domains = ["*"]
"""


def test_check_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config prints the resolved config with every secret masked, the database
    password included."""
    toml = GOOD_TOML + '[database]\nurl = "postgresql+psycopg://relay:db-pass-1@db:5432/relay"\n'
    assert main(["check-config", "--config", str(write(tmp_path, toml))]) == 0
    out = capsys.readouterr().out
    resolved = json.loads(out)
    assert resolved["provider"]["client_secret"] == "**********"
    assert resolved["session"]["secret"] == "**********"
    assert resolved["database"]["url"] == "postgresql+psycopg://relay:***@db:5432/relay"
    assert "provider-secret-value" not in out and "0123456789abcdef" not in out
    assert "db-pass-1" not in out
    assert resolved["session"]["idle_timeout"] == 86400


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (
            ('secret = "0123456789abcdef0123456789abcdef-x"', 'secret = "too-short"'),
            "session.secret",
        ),
        (('issuer = "https://idp.example.com"', ""), "provider.issuer"),
        (("https://auth.example.com", "http://auth.example.com"), "server.public_url"),
        (("https://idp.example.com", "http://idp.example.com"), "provider.issuer"),
    ],
    ids=["short-secret", "missing-issuer", "http-public-url", "http-issuer"],
)
def test_check_config_rejects_with_one_line_naming_the_key(
    tmp_path: Path, edit: tuple[str, str], key: str
) -> None:
    """The installed `relay check-config` exits non-zero with one line naming the bad key."""
    path = write(tmp_path, GOOD_TOML.replace(*edit))
    result = subprocess.run(
        [Path(sys.executable).parent / "relay", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"relay: config error: {key}: ")
    assert result.stdout == ""


def test_check_config_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`relay check-config | head -1` ends without a BrokenPipeError traceback."""
    relay = Path(sys.executable).parent / "relay"
    result = subprocess.run(
        f"'{relay}' check-config --config '{write(tmp_path, GOOD_TOML)}' | head -1",
        shell=True,  # the pipe is the point; every part of the command is ours
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout == "{\n"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_unreadable_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file or broken TOML is one clear line, not a traceback."""
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 2
    assert main(["check-config", "--config", str(write(tmp_path, "[server"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("relay: config error: ") for line in err)


EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def test_example_config_is_valid_once_its_secrets_are_set() -> None:
    """config.example.toml loads once the two secrets are real; as shipped it is refused,
    naming exactly those two keys, so nobody runs on the example's placeholders."""
    env = {
        "RELAY_SESSION__SECRET": "Xq3" * 16,
        "RELAY_PROVIDER__CLIENT_SECRET": "issued-by-the-provider",
    }
    config = load_config(EXAMPLE, env=env)
    assert config.server.public_url == "https://auth.example.com"
    with pytest.raises(ConfigError) as refused:
        load_config(EXAMPLE, env={})
    assert [line.split(":")[0] for line in refused.value.lines] == [
        "provider.client_secret",
        "session.secret",
    ]
    assert all("placeholder" in line for line in refused.value.lines)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("session", "secret", "change-me-please-to-something-of-32-characters"),
        ("session", "secret", " " * 40),
        ("provider", "client_secret", ""),
        ("provider", "client_secret", "CHANGEME"),
    ],
)
def test_placeholder_and_empty_secrets_are_refused(section: str, key: str, value: str) -> None:
    """An empty secret or one still reading like the example's placeholder stops startup."""
    [line] = errors(with_(section, **{key: value}))
    assert line.startswith(f"{section}.{key}: ")


def test_cross_section_rules_are_reported_with_other_errors() -> None:
    """A rule spanning sections (Secure cookies on an http public_url) is reported in the
    same run as an unrelated field error."""
    data = with_("provider", scopes=["email"])
    data["server"]["public_url"] = "http://localhost:4180"
    keys = sorted(line.split(":")[0] for line in errors(data))
    assert keys == ["provider.scopes", "session.cookie_secure"]


def test_example_config_documents_every_key() -> None:
    """Every key the relay reads appears in config.example.toml (set or commented out)."""
    text = EXAMPLE.read_text()
    for section_name, field in Config.model_fields.items():
        assert f"[{section_name}]" in text
        section = field.annotation
        if typing.get_origin(section) is list:  # [[providers]]: tables of a section's keys
            (section,) = typing.get_args(section)
        assert isinstance(section, type) and issubclass(section, BaseModel)
        for key in section.model_fields:
            assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE), f"{section_name}.{key}"


def test_an_address_prefix_out_of_range_stops_startup() -> None:
    """[limits] ipv6_prefix and ipv4_prefix outside their ranges are named, one line each."""
    lines = errors(with_("limits", ipv6_prefix=0, ipv4_prefix=33))
    assert len(lines) == 2
    assert any(line.startswith("limits.ipv6_prefix") for line in lines)
    assert any(line.startswith("limits.ipv4_prefix") for line in lines)
