"""`relay sessions list | revoke | stats`: what an operator runs against the relay's config,
as a real process, on SQLite and PostgreSQL."""

from __future__ import annotations

import getpass
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from socket import gethostname
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text

from relay.crypto import hash_id, new_id
from relay.store.models import sessions
from tests.conftest import sign_in
from tests.process import RELAY, free_port
from tests.provider import TestProvider

CONFIG = """
[server]
public_url = "https://relay.test"
[provider]
issuer = "https://idp.test"
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
COOKIE = "__Host-relay_session"


def relay_cli(tmp_path: Path, url: str, *args: str) -> tuple[int, str, list[str]]:
    """Run `relay sessions ARGS --config ...`; (exit code, stdout, stderr lines)."""
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG.format(url=url))
    result = subprocess.run(
        [RELAY, "sessions", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr.strip().splitlines()


def add_session(
    db: Engine,
    subject: str | None,
    *,
    email: str | None = None,
    status: str = "active",
    expires_in: int = 3600,
    id_hash: str | None = None,
    user_agent: str | None = None,
    address: str | None = None,
) -> str:
    """A row written straight into the table, on the wall clock the CLI reads; returns its
    hash."""
    id_hash = id_hash or hash_id(new_id())
    now = int(time.time())
    claims = None if subject is None else json.dumps({"sub": subject, "email": email})
    with db.begin() as conn:
        conn.execute(
            insert(sessions).values(
                id_hash=id_hash,
                status=status,
                subject=subject,
                claims=claims,
                created_at=now - 100,
                last_accessed_at=now - 10,
                expires_at=now + expires_in,
                user_agent=user_agent,
                client_address=address,
            )
        )
    return id_hash


def remaining(db: Engine) -> list[str | None]:
    with db.connect() as conn:
        rows = conn.execute(text("SELECT subject FROM sessions ORDER BY subject"))
        return [row.subject for row in rows]


def test_list_prints_a_table(tmp_path: Path, database_url: str, db: Engine) -> None:
    """A header and one line per row: short id, subject, email, state, times in UTC."""
    alice = add_session(db, "alice", email="alice@example.com")
    add_session(db, None, status="pending", expires_in=600)
    add_session(db, "bob", email="bob@example.com", expires_in=-5)
    code, out, err = relay_cli(tmp_path, database_url, "list")
    assert code == 0, err
    lines = out.splitlines()
    header = "ID SUBJECT EMAIL STATE CREATED LAST ACCESS EXPIRES DEVICE"
    assert lines[0].split() == header.split()
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:]}
    assert rows[alice[:12]] == ["alice", "alice@example.com", "active"]
    assert sorted(tuple(r) for r in rows.values()) == [
        ("-", "-", "pending"),
        ("alice", "alice@example.com", "active"),
        ("bob", "bob@example.com", "expired"),
    ]
    created = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 100))
    assert created in lines[1]


def test_list_shows_each_sessions_device_and_json_where_from(
    tmp_path: Path, database_url: str, db: Engine
) -> None:
    """What a session recorded at sign-in: the device read from its User-Agent in the table
    (escaped for the terminal), the rest in --json."""
    firefox = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
    add_session(db, "alice", user_agent=firefox, address="203.0.113.0/24")
    add_session(db, "bob", user_agent="\x1b[2J/1.0")
    code, out, err = relay_cli(tmp_path, database_url, "list")
    assert code == 0, err
    assert "Firefox 133 on Windows" in out and "\x1b" not in out
    code, out, _ = relay_cli(tmp_path, database_url, "list", "--json", "--sub", "alice")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert (row["device"], row["user_agent"], row["address"]) == (
        "Firefox 133 on Windows",
        firefox,
        "203.0.113.0/24",
    )


def test_list_as_json_lines_and_by_subject(tmp_path: Path, database_url: str, db: Engine) -> None:
    """--json: one object per line; --sub: only that user's sessions."""
    alice = add_session(db, "alice", email="alice@example.com")
    add_session(db, "bob", email="bob@example.com")
    code, out, _ = relay_cli(tmp_path, database_url, "list", "--json", "--sub", "alice")
    assert code == 0
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["id"] == alice[:12]
    assert (row["subject"], row["email"], row["state"]) == ("alice", "alice@example.com", "active")
    assert row["expires_at"] > row["last_accessed_at"] > row["created_at"]
    code, out, _ = relay_cli(tmp_path, database_url, "list", "--json")
    assert sorted(json.loads(line)["subject"] for line in out.splitlines()) == ["alice", "bob"]


def test_stats(tmp_path: Path, database_url: str, db: Engine) -> None:
    """Active, pending, and expired rows awaiting the pruner; as text and as JSON."""
    add_session(db, "alice")
    add_session(db, "bob")
    add_session(db, None, status="pending", expires_in=600)
    add_session(db, "carol", expires_in=-1)
    code, out, _ = relay_cli(tmp_path, database_url, "stats")
    assert (code, out) == (0, "active: 2\npending: 1\nexpired: 1\n")
    code, out, _ = relay_cli(tmp_path, database_url, "stats", "--json")
    assert json.loads(out) == {"active": 2, "pending": 1, "expired": 1}


def test_revoke_by_subject(tmp_path: Path, database_url: str, db: Engine) -> None:
    """--sub ends every active session of the user and says how many; a user with none: 0,
    exit 1 and a pointer to `relay sessions list` (a subject spelled unlike the provider's)."""
    add_session(db, "alice")
    add_session(db, "alice")
    add_session(db, "bob")
    code, out, err = relay_cli(tmp_path, database_url, "revoke", "--sub", "alice")
    assert (code, out) == (0, "ended 2 sessions of alice\n"), err
    assert remaining(db) == ["bob"]
    [audit] = [e for e in map(json.loads, err) if e["event"] == "audit.sessions_ended"]
    assert (audit["via"], audit["by"], audit["source"]) == ("cli", getpass.getuser(), gethostname())
    assert (audit["subjects"], audit["ended"], audit["asked"]) == (["alice"], 2, "alice")
    code, out, err = relay_cli(tmp_path, database_url, "revoke", "--sub", "alice")
    assert (code, out) == (1, "ended 0 sessions of alice\n")
    assert err[-1] == (
        "relay: no active session has the subject alice; "
        "`relay sessions list` shows each session's subject"
    )


def test_revoke_by_id_prefix(tmp_path: Path, database_url: str, db: Engine) -> None:
    """--id with the 12 characters `list` shows ends that one session."""
    alice = add_session(db, "alice")
    add_session(db, "alice")
    code, out, _ = relay_cli(tmp_path, database_url, "revoke", "--id", alice[:12])
    assert (code, out) == (0, f"ended 1 session ({alice[:12]})\n")
    with db.connect() as conn:
        left = conn.execute(text("SELECT id_hash FROM sessions")).scalars().all()
    assert len(left) == 1 and left[0] != alice


def test_revoke_refuses_a_prefix_that_does_not_name_one_session(
    tmp_path: Path, database_url: str, db: Engine
) -> None:
    """Too short or not hex (exit 2), naming nothing or several sessions (exit 1): a line
    saying so, and nothing ends."""
    add_session(db, "alice", id_hash="abcdef0123" + "0" * 54)
    add_session(db, "bob", id_hash="abcdef0123" + "f" * 54)
    for prefix, code_wanted, says in (
        ("abcdef0", 2, "--id: give 8 to 64 hex characters"),
        ("abcdefgh", 2, "--id: give 8 to 64 hex characters"),
        ("abcdef01", 1, "2 active sessions' ids start with abcdef01: nothing ended"),
        ("0123456789", 1, "no active session's id starts with 0123456789"),
    ):
        code, out, err = relay_cli(tmp_path, database_url, "revoke", "--id", prefix)
        assert (code, out) == (code_wanted, "")
        assert says in err[-1]
    assert remaining(db) == ["alice", "bob"]


@pytest.mark.parametrize(
    "args", [("list",), ("stats",), ("revoke", "--sub", "alice"), ("revoke", "--id", "abcdef01")]
)
def test_an_unreachable_database_is_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Database trouble: exit 1 and one line naming database.url, password masked."""
    code, out, err = relay_cli(tmp_path, DEAD_DB.format(port=free_port()), *args)
    assert (code, out) == (1, "")
    assert len(err) == 1, err
    assert err[0].startswith("relay: cannot use the database at postgresql+psycopg://relay:***@")
    assert "(database.url)" in err[0]
    assert "hunter2-secret" not in err[0]


def test_revoke_needs_exactly_one_of_sub_and_id(tmp_path: Path, database_url: str) -> None:
    """Neither or both: argparse's usage error (exit 2)."""
    assert relay_cli(tmp_path, database_url, "revoke")[0] == 2
    both = relay_cli(tmp_path, database_url, "revoke", "--sub", "a", "--id", "abcdef01")
    assert both[0] == 2


def test_a_revoked_session_stops_working_at_the_running_relay(
    tmp_path: Path,
    database_url: str,
    make_relay: Callable[..., Any],
    provider: TestProvider,
) -> None:
    """A relay holding the session in its cache stops accepting it within 1 s (polled with
    that deadline): on PostgreSQL through NOTIFY, on SQLite through the ended-sessions log."""
    with make_relay() as relay:
        sign_in(relay, provider)
        cookie = relay.cookies[COOKIE]
        relay.cookies.clear()
        headers = {"cookie": f"{COOKIE}={cookie}"}
        assert relay.get("/auth", headers=headers).status_code == 200
        code, _, err = relay_cli(tmp_path, database_url, "revoke", "--sub", provider.subject)
        assert code == 0, err
        revoked = time.monotonic()
        while relay.get("/auth", headers=headers).status_code == 200:
            assert time.monotonic() - revoked < 1.0, "still accepted after 1 s"
        assert relay.get("/auth", headers=headers).status_code == 401


def test_list_escapes_terminal_controls_from_claims(
    tmp_path: Path, database_url: str, db: Engine
) -> None:
    """A subject or email holding ESC sequences, a bell, a bidirectional override or a
    newline is printed escaped: nothing from a claim reaches the terminal as a control, and
    each session stays on one line (the JSON lines escape them too)."""
    add_session(db, "evil\x1b[2J\x1b[H", email="x\x1b]0;pwned\x07@example.com")
    add_session(db, "\u202eadmin\nroot", email="ok@example.com")
    code, out, err = relay_cli(tmp_path, database_url, "list")
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    lines = out.splitlines()
    assert len(lines) == 3
    assert any("evil\\x1b[2J\\x1b[H" in line and "x\\x1b]0;pwned\\x07@" in line for line in lines)
    assert any("\\u202eadmin\\nroot" in line for line in lines)
    code, out, err = relay_cli(tmp_path, database_url, "list", "--json")
    assert code == 0, err
    assert "\x1b" not in out and "\u202e" not in out
    assert {json.loads(line)["subject"] for line in out.splitlines()} == {
        "evil\x1b[2J\x1b[H",
        "\u202eadmin\nroot",
    }


def test_revoke_echoes_the_subject_escaped_and_refuses_undecodable_bytes(
    tmp_path: Path, database_url: str, db: Engine
) -> None:
    """--sub is echoed escaped; bytes that are not UTF-8 (a lone surrogate in argv) end the
    command with one line and exit 2, no traceback, nothing ended."""
    add_session(db, "evil\x1b[2J")
    code, out, err = relay_cli(tmp_path, database_url, "revoke", "--sub", "evil\x1b[2J")
    assert code == 0, err
    assert out.strip() == "ended 1 session of evil\\x1b[2J"
    add_session(db, "bob")
    config = tmp_path / "relay.toml"
    for action in ("revoke", "list"):
        result = subprocess.run(
            [RELAY.encode(), b"sessions", action, b"--sub", b"bob\xff", b"--config", bytes(config)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert b"Traceback" not in result.stderr
        assert result.stderr.decode().startswith("relay: --sub bob\\udcff is not valid Unicode")
    assert remaining(db) == ["bob"]


def run_relay(*args: str) -> tuple[int, str, str]:
    result = subprocess.run([RELAY, *args], capture_output=True, text=True, timeout=60, check=False)
    return result.returncode, result.stdout, result.stderr


def test_database_commands_need_only_the_database_section(
    tmp_path: Path, database_url: str, db: Engine
) -> None:
    """migrate, prune and sessions run with a config holding [database] alone (a first
    deployment's, before the provider and secrets are filled in), or with --database-url and
    no file at all; other sections' mistakes are not theirs to report."""
    add_session(db, "alice")
    config = tmp_path / "db-only.toml"
    config.write_text(f'[database]\nurl = "{database_url}"\n[provider]\nclient_id = ""\n')
    for args in (["--config", str(config)], ["--database-url", database_url]):
        code, out, err = run_relay("sessions", "list", "--json", *args)
        assert code == 0, err
        assert [json.loads(line)["subject"] for line in out.splitlines()] == ["alice"]
        assert run_relay("migrate", *args)[0] == 0
        code, out, err = run_relay("prune", *args)
        assert (code, out) == (0, "removed 0 expired rows\n"), err
    code, out, err = run_relay(
        "sessions", "revoke", "--sub", "alice", "--database-url", database_url
    )
    assert (code, out) == (0, "ended 1 session of alice\n"), err


def test_database_commands_say_what_they_need(tmp_path: Path) -> None:
    """Neither --config nor --database-url: one line saying to give one, exit 2; a bad
    [database] url is named by its key."""
    code, out, err = run_relay("sessions", "list")
    assert (code, out) == (2, "")
    assert err.strip().startswith("relay sessions: give --config PATH or --database-url URL")
    config = tmp_path / "bad.toml"
    config.write_text('[database]\nurl = "mysql://nope"\n')
    code, _, err = run_relay("prune", "--config", str(config))
    assert code == 2
    assert err.startswith("relay: config error: database.url:")
