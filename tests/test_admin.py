"""The admin API under /admin: off without [admin] token, for [admin] allowed addresses (or
the internal port) with the bearer token, and what each endpoint does, on both databases."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from sqlalchemy import Engine, insert, text
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import ConfigError
from relay.crypto import hash_id
from relay.store.models import sessions
from tests.conftest import (
    PG_ADMIN,
    PUBLIC_URL,
    FakeClock,
    base_config,
    log_lines,
    postgres_database,
    run_migrations,
    sign_in,
)
from tests.live import auth as live_auth
from tests.live import metric, relay_config, replicas, served_provider
from tests.live import sign_in as live_sign_in
from tests.process import RELAY
from tests.provider import ProviderTransport, TestProvider

TOKEN = "admin-token-for-the-tests-0123456789-abcdef"
COOKIE = "__Host-relay_session"
ENDPOINTS = [
    ("GET", "/admin/stats", None),
    ("GET", "/admin/sessions", None),
    ("POST", "/admin/sessions/revoke", {"sub": "nobody"}),
    ("POST", "/admin/prune", None),
]
ENDPOINT_IDS = ["stats", "sessions", "revoke", "prune"]


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def call(
    relay: TestClient,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    return relay.request(method, path, json=body, headers=headers)


@pytest.fixture
def admin(make_relay: Callable[..., Any]) -> Iterator[TestClient]:
    """A relay with the admin API on, called from loopback (admin.allowed's default)."""
    with make_relay(peer="127.0.0.1", admin={"token": TOKEN}) as relay:
        yield relay


def signed_in(relay: TestClient, provider: TestProvider, subject: str, email: str) -> str:
    """A real login as ``subject``; returns the session cookie (the jar is left empty)."""
    provider.subject = subject
    provider.profile = {**provider.profile, "email": email}
    relay.cookies.clear()
    sign_in(relay, provider)
    cookie = relay.cookies[COOKIE]
    relay.cookies.clear()
    return cookie


def auth(relay: TestClient, cookie: str) -> int:
    status: int = relay.get("/auth", headers={"cookie": f"{COOKIE}={cookie}"}).status_code
    return status


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_the_api_is_off_without_a_token(
    make_relay: Callable[..., Any], method: str, path: str, body: Any
) -> None:
    """No [admin] token: every admin path is a 404, whatever the caller sends."""
    with make_relay(peer="127.0.0.1") as relay:
        response = call(relay, method, path, body, bearer())
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert set(response.json()) == {"error", "message", "request_id"}


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": TOKEN},  # no scheme
        {"authorization": "Basic " + TOKEN},
        {"authorization": "Bearer "},
        bearer(TOKEN + "x"),
        bearer(TOKEN[:-1]),
        bearer("admin-token-for-the-tests-0123456789-abcdeX"),
    ],
    ids=["none", "no-scheme", "basic", "empty", "longer", "shorter", "last-char-wrong"],
)
def test_a_missing_or_wrong_token_gets_401(
    admin: TestClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    """Without the exact token: 401 JSON with WWW-Authenticate: Bearer, and nothing done."""
    response = call(admin, method, path, body, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_the_right_token_is_let_in(admin: TestClient, method: str, path: str, body: Any) -> None:
    """With the token (the scheme in any case), each endpoint answers 200 JSON."""
    response = call(admin, method, path, body, {"authorization": f"bEaReR {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"


def test_only_allowed_addresses_may_call(make_relay: Callable[..., Any]) -> None:
    """A caller outside admin.allowed gets 404 even with the token: directly, or as the
    client a trusted proxy forwards; an allowed one passes."""
    with make_relay(peer="198.51.100.7", admin={"token": TOKEN}) as relay:
        assert relay.get("/admin/stats", headers=bearer()).status_code == 404
    with make_relay(peer="127.0.0.1", admin={"token": TOKEN}) as relay:
        forwarded = {**bearer(), "x-forwarded-for": "203.0.113.9"}
        assert relay.get("/admin/stats", headers=forwarded).status_code == 404
    with make_relay(
        peer="127.0.0.1", admin={"token": TOKEN, "allowed": ["203.0.113.0/24"]}
    ) as relay:
        forwarded = {**bearer(), "x-forwarded-for": "203.0.113.9"}
        assert relay.get("/admin/stats", headers=forwarded).status_code == 200
        assert relay.get("/admin/stats", headers=bearer()).status_code == 404  # loopback now not


def test_a_proxy_that_names_no_readable_client_is_not_the_caller(
    make_relay: Callable[..., Any],
) -> None:
    """Forwarding headers that name no readable client refuse (404): the trusted proxy's
    own loopback address stands for all of its clients. A request with no forwarding
    header at all is its peer's own (curl on the relay's host)."""
    with make_relay(peer="127.0.0.1", admin={"token": TOKEN}) as relay:
        for mangled in ({"x-forwarded-for": "not-an-address"}, {"x-real-ip": ""}):
            answer = relay.get("/admin/stats", headers={**bearer(), **mangled})
            assert answer.status_code == 404, mangled
        assert relay.get("/admin/stats", headers=bearer()).status_code == 200


def test_with_an_internal_port_the_api_lives_there_only(make_relay: Callable[..., Any]) -> None:
    """server.internal_port set: /admin leaves the public port (404 even from loopback with
    the token) and is served on the internal port to any address, with the token."""
    sections = {"server": {"internal_port": 9180}, "admin": {"token": TOKEN}}
    with make_relay(peer="127.0.0.1", **sections) as relay:
        assert relay.get("/admin/stats", headers=bearer()).status_code == 404
    with make_relay(peer="10.1.2.3", **sections) as relay:
        inside = "http://relay.test:9180/admin/stats"
        assert relay.get(inside, headers=bearer()).status_code == 200
        assert relay.get(inside, headers=bearer("wrong" * 8)).status_code == 401
        assert relay.get(inside).status_code == 401


def test_the_token_never_reaches_the_logs(
    admin: TestClient, provider: TestProvider, log_stream: io.StringIO
) -> None:
    """Neither the token nor a wrong guess at it appears in any log line; refusals and
    actions are logged with a reason."""
    signed_in(admin, provider, "alice", "alice@example.com")
    wrong = "wrong-guess-at-the-admin-token-0123456789"
    admin.get("/admin/stats", headers=bearer(wrong))
    admin.get("/admin/stats")
    for method, path, body in ENDPOINTS:
        call(admin, method, path, body, bearer())
    admin.post("/admin/sessions/revoke", json={"sub": "alice"}, headers=bearer())
    text_logged = log_stream.getvalue()
    assert TOKEN not in text_logged
    assert wrong not in text_logged
    events = log_lines(log_stream)
    refusals = [e["reason"] for e in events if e["event"] == "admin.refused"]
    assert refusals == ["wrong_token", "no_token"]
    nobody, audit = [e for e in events if e["event"] == "audit.sessions_ended"]
    assert (nobody["asked"], nobody["subjects"], nobody["ended"]) == ("nobody", [], 0)
    # Who (the API knows only its token), whose, how many, from where, through what.
    assert (audit["by"], audit["subjects"], audit["ended"]) == ("admin token", ["alice"], 1)
    assert (audit["via"], audit["asked"], audit["source"]) == ("api", "alice", "127.0.0.1")


def test_stats_counts_sessions_by_state(
    admin: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """Active sessions, pending logins, and rows past expiry awaiting the pruner."""
    signed_in(admin, provider, "alice", "alice@example.com")
    signed_in(admin, provider, "bob", "bob@example.com")
    assert admin.get("/login", params={"rd": "/"}).status_code == 302  # left pending
    assert admin.get("/admin/stats", headers=bearer()).json() == {
        "active": 2,
        "pending": 1,
        "expired": 0,
    }
    clock.advance(600)  # session.pending_lifetime
    assert admin.get("/admin/stats", headers=bearer()).json() == {
        "active": 2,
        "pending": 0,
        "expired": 1,
    }


def test_sessions_lists_who_is_signed_in(
    admin: TestClient, provider: TestProvider, clock: FakeClock
) -> None:
    """Each session: the id the logs show, subject, email, state and times; filter by sub."""
    alice = signed_in(admin, provider, "alice", "alice@example.com")
    signed_in(admin, provider, "bob", "bob@example.com")
    listed = admin.get("/admin/sessions", params={"sub": "alice"}, headers=bearer()).json()
    now = int(clock())
    assert listed == {
        "sessions": [
            {
                "id": hash_id(alice)[:12],
                "subject": "alice",
                "email": "alice@example.com",
                "state": "active",
                "created_at": now,
                "last_accessed_at": now,
                "expires_at": now + 86400,
                # What the session recorded at sign-in: the test client's User-Agent, and
                # no address (it came from loopback, a trusted proxy that named no client).
                "device": "Unknown device",
                "user_agent": "testclient",
                "address": None,
                "provider": provider.issuer,
                "acr": None,
                "amr": [],
                "auth_time": None,
            }
        ],
        "next_cursor": None,
    }
    everyone = admin.get("/admin/sessions", headers=bearer()).json()["sessions"]
    assert sorted(s["subject"] for s in everyone) == ["alice", "bob"]
    assert alice not in json.dumps(everyone)  # the cookie itself is never shown


def test_sessions_come_in_pages(admin: TestClient, provider: TestProvider) -> None:
    """limit and cursor walk every session once; the last page says next_cursor null."""
    cookies = {signed_in(admin, provider, f"user{i}", f"u{i}@example.com") for i in range(5)}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        page = admin.get("/admin/sessions", params=params, headers=bearer()).json()
        pages += 1
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(hash_id(c)[:12] for c in cookies)


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"cursor": "abc"}, {"cursor": "Z" * 64}],
    ids=["limit-0", "limit-too-big", "limit-word", "cursor-short", "cursor-not-hex"],
)
def test_bad_paging_parameters_get_400(admin: TestClient, params: dict[str, str]) -> None:
    """A limit outside 1-1000 or a cursor the API did not hand out: 400 with a reason."""
    response = admin.get("/admin/sessions", params=params, headers=bearer())
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["message"]


def test_revoke_by_subject_ends_that_users_sessions_at_once(
    admin: TestClient, provider: TestProvider, db: Engine
) -> None:
    """{"sub"}: every session of the user ends; /auth says 401 on the next request, though
    the session was in this relay's cache; other users' sessions stay."""
    first = signed_in(admin, provider, "alice", "alice@example.com")
    second = signed_in(admin, provider, "alice", "alice@example.com")
    bob = signed_in(admin, provider, "bob", "bob@example.com")
    for cookie in (first, second, bob):
        assert auth(admin, cookie) == 200
    response = admin.post("/admin/sessions/revoke", json={"sub": "alice"}, headers=bearer())
    assert response.json() == {"ended": 2}
    assert auth(admin, first) == 401
    assert auth(admin, second) == 401
    assert auth(admin, bob) == 200
    again = admin.post("/admin/sessions/revoke", json={"sub": "alice"}, headers=bearer())
    assert again.json() == {"ended": 0}


def test_revoke_by_id_prefix_ends_that_session(admin: TestClient, provider: TestProvider) -> None:
    """{"id"}: the session whose hash starts with the prefix (the 12 characters the logs
    and the list show, or as few as 8, any case) ends; the user's other session stays."""
    first = signed_in(admin, provider, "alice", "alice@example.com")
    second = signed_in(admin, provider, "alice", "alice@example.com")
    assert auth(admin, first) == 200
    prefix = hash_id(first)[:8].upper()
    response = admin.post("/admin/sessions/revoke", json={"id": prefix}, headers=bearer())
    assert response.json() == {"ended": 1}
    assert auth(admin, first) == 401
    assert auth(admin, second) == 200


def add_session(db: Engine, id_hash: str, now: int) -> None:
    with db.begin() as conn:
        conn.execute(
            insert(sessions).values(
                id_hash=id_hash,
                status="active",
                subject="carol",
                claims="{}",
                created_at=now,
                last_accessed_at=now,
                expires_at=now + 3600,
            )
        )


def test_a_prefix_naming_several_sessions_ends_none(
    admin: TestClient, db: Engine, clock: FakeClock
) -> None:
    """Two sessions whose hashes share 10 characters: an 8- or 10-character prefix is
    refused with 409 and ends neither; 11 characters name one."""
    add_session(db, "abcdef0123" + "0" * 54, int(clock()))
    add_session(db, "abcdef0123" + "f" * 54, int(clock()))
    for prefix in ("abcdef01", "abcdef0123"):
        response = admin.post("/admin/sessions/revoke", json={"id": prefix}, headers=bearer())
        assert response.status_code == 409
        assert response.json()["matches"] == 2
    assert count_active(db) == 2
    response = admin.post("/admin/sessions/revoke", json={"id": "abcdef0123f"}, headers=bearer())
    assert response.json() == {"ended": 1}
    assert count_active(db) == 1


def count_active(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM sessions")).scalar_one())


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"\xff\xfe", 400),
        (b"[]", 400),
        (b'"alice"', 400),
        (b"{}", 400),
        (b'{"sub": ""}', 400),
        (b'{"sub": 7}', 400),
        (b'{"sub": "alice", "id": "abcdef01"}', 400),
        (b'{"id": "abcdef0"}', 400),  # 7 characters
        (b'{"id": "abcdef0g"}', 400),  # not hex
        (b'{"id": "abcd%___"}', 400),  # LIKE wildcards
        (b'{"id": "0123456789abcdef"}', 404),  # matches nothing
        (b'{"sub": "' + b"a" * 20_000 + b'"}', 413),
    ],
)
def test_bad_revoke_bodies_are_refused(
    admin: TestClient, provider: TestProvider, db: Engine, body: bytes, status: int
) -> None:
    """Not JSON, not an object, neither or both of sub/id, a prefix too short, not hex or
    naming nothing: a 4xx with a reason, and nothing ends."""
    signed_in(admin, provider, "alice", "alice@example.com")
    headers = {**bearer(), "content-type": "application/json"}
    response = admin.post("/admin/sessions/revoke", content=body, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]
    assert count_active(db) == 1


def test_prune_removes_expired_rows(
    admin: TestClient, provider: TestProvider, clock: FakeClock, db: Engine
) -> None:
    """POST /admin/prune runs one pass now: expired rows go, live ones stay."""
    signed_in(admin, provider, "alice", "alice@example.com")
    assert admin.get("/login", params={"rd": "/"}).status_code == 302  # pending, 10 minutes
    clock.advance(601)
    response = admin.post("/admin/prune", headers=bearer())
    assert response.json() == {"removed": 1, "skipped": False}
    assert count_active(db) == 1


@pytest.mark.parametrize(
    "token",
    [
        "short-token",
        "change-me-change-me-change-me-change-me",
        "   ",
    ],
    ids=["short", "placeholder", "blank"],
)
def test_weak_admin_tokens_are_refused_at_startup(database_url: str, token: str) -> None:
    """admin.token: at least 32 characters, not an example's placeholder."""
    with pytest.raises(ConfigError) as refused:
        base_config(database_url, admin={"token": token})
    assert any(line.startswith("admin.token: ") for line in refused.value.lines)


# Two `relay serve` processes on one PostgreSQL database (as tests/test_replicas.py runs
# them): a revocation made through one, or by the CLI, reaches the other's cache in 1 s.
BOUND = 1.0  # seconds: the documented bound (README "Sessions on the hot path")
HITS = "relay_session_cache_hits_total"


@pytest.fixture
def two_replicas(tmp_path: Path) -> Iterator[tuple[TestProvider, str, str, Path]]:
    """(provider, replica A's base URL, replica B's, A's config file); A has the admin API."""
    # served_provider's uvicorn sets its loggers' levels for the whole process (to warning):
    # put them back, or a later test of uvicorn's log lines (tests/test_logs.py) sees none.
    loggers = [logging.getLogger(f"uvicorn.{name}") for name in ("error", "access", "asgi")]
    levels = [logger.level for logger in loggers]
    try:
        yield from _two_replicas(tmp_path)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _two_replicas(tmp_path: Path) -> Iterator[tuple[TestProvider, str, str, Path]]:
    with postgres_database() as url, served_provider() as provider:
        run_migrations(url)
        admin_on = f'[admin]\ntoken = "{TOKEN}"\n'
        config_a, a = relay_config(tmp_path, "a", url, issuer=provider.issuer, extra=admin_on)
        config_b, b = relay_config(tmp_path, "b", url, issuer=provider.issuer)
        with replicas(config_a, config_b):
            yield provider, a, b, config_a


def cached_at(http: httpx2.Client, base: str, cookie: str) -> None:
    """/auth at ``base`` answers 200 from its cache (the hit counter moves)."""
    assert live_auth(http, base, cookie) == 200
    before = metric(http, base, HITS)
    assert live_auth(http, base, cookie) == 200
    assert metric(http, base, HITS) == before + 1


def seconds_to_401(http: httpx2.Client, base: str, cookie: str, since: float) -> float:
    """Poll /auth at ``base`` until a 401 (200 before it; no 401 within 3 x BOUND fails)."""
    while True:
        status = live_auth(http, base, cookie)
        elapsed = time.monotonic() - since
        if status == 401:
            return elapsed
        assert status == 200, status
        assert elapsed < 3 * BOUND, "the revoked session still works"


@pytest.mark.postgres
@pytest.mark.parametrize("via", ["cli", "api"])
def test_a_revocation_reaches_the_other_replica_within_a_second(
    two_replicas: tuple[TestProvider, str, str, Path], via: str
) -> None:
    """alice's session, cached on replica B, is revoked through A's admin API or by `relay
    sessions revoke` with A's config: B answers 401 within 1 s; bob's session stays."""
    provider, a, b, config_a = two_replicas
    alice = live_sign_in(a, provider, "alice", "op-1")
    bob = live_sign_in(a, provider, "bob", "op-2")
    with httpx2.Client(timeout=10) as http:
        for cookie in (alice, bob):
            cached_at(http, b, cookie)
        if via == "api":
            response = http.post(
                a + "/admin/sessions/revoke", json={"sub": "alice"}, headers=bearer()
            )
            assert response.json() == {"ended": 1}
        else:
            command = [RELAY, "sessions", "revoke", "--sub", "alice", "--config", str(config_a)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
            assert (done.returncode, done.stdout) == (0, "ended 1 session of alice\n"), done.stderr
        revoked = time.monotonic()
        assert seconds_to_401(http, b, alice, revoked) < BOUND
        assert live_auth(http, a, alice) == 401
        assert live_auth(http, b, bob) == 200


@pytest.mark.postgres
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_database_gone_is_503_json(
    provider: TestProvider,
    clock: FakeClock,
    log_stream: io.StringIO,
    endpoint: tuple[str, str, Any],
) -> None:
    """With the database dropped, each endpoint answers 503 JSON naming the reason (never a
    500 or a 401), logged as admin.failed, without a traceback."""
    with postgres_database() as url:
        run_migrations(url)
        app = create_app(
            base_config(url, admin={"token": TOKEN}),
            transport=ProviderTransport(provider),
            clock=clock,
            run_pruner_task=False,
        )
        with TestClient(app, base_url=PUBLIC_URL, client=("127.0.0.1", 40000)) as relay:
            with psycopg.connect(PG_ADMIN, autocommit=True) as pg:
                pg.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            response = call(relay, *endpoint, bearer())
    assert response.status_code == 503
    assert response.json()["error"] == "database.unavailable"
    assert response.json()["request_id"]
    events = log_lines(log_stream)
    assert [e["reason"] for e in events if e["event"] == "admin.failed"] == ["database.unavailable"]
    assert not [e for e in events if "exception" in e or "Traceback" in json.dumps(e)]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"sub": "\\ud800"}', "lone surrogate"),
        (b'{"sub": "alice\\u0000"}', "NUL"),
        (b"[" * 5000 + b"]" * 5000, "nested too deep"),
        (b'{"sub": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deep"),
    ],
    ids=["lone-surrogate", "nul", "deep-array", "deep-in-object"],
)
def test_revoke_refuses_text_the_database_cannot_take(
    admin: TestClient,
    provider: TestProvider,
    log_stream: io.StringIO,
    body: bytes,
    problem: str,
) -> None:
    """JSON that parses into what no driver stores (a lone surrogate, NUL on PostgreSQL) or
    that nests deep enough to exhaust the parser: 400 with a reason, logged, no session
    ended, never a 500 nor a 503 that blames the database."""
    alice = signed_in(admin, provider, "alice", "alice@example.com")
    response = admin.post("/admin/sessions/revoke", content=body, headers=bearer())
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert problem in response.json()["message"]
    refused = [e for e in log_lines(log_stream) if e["event"] == "admin.refused"]
    assert refused[-1]["reason"] in ("unstorable_text", "json_too_deep")
    assert auth(admin, alice) == 200


def test_listing_by_a_subject_with_nul_is_400(admin: TestClient, log_stream: io.StringIO) -> None:
    """GET /admin/sessions?sub=%00: 400 with a reason, logged, rather than PostgreSQL's
    refusal of NUL taken for an outage (503)."""
    response = admin.get("/admin/sessions", params={"sub": "alice\x00"}, headers=bearer())
    assert response.status_code == 400
    assert "NUL" in response.json()["message"]
    refused = [e for e in log_lines(log_stream) if e["event"] == "admin.refused"]
    assert refused[-1]["reason"] == "unstorable_text"
