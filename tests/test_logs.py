"""Logs: one JSON object per line, named events, a request id, and never a secret."""

from __future__ import annotations

import io
import logging
import re
import time
from typing import Any

import structlog
from joserfc.jwk import RSAKey
from starlette.testclient import TestClient

from tests.conftest import (
    SECRET,
    callback_path,
    log_lines,
    provider_redirect,
    query,
    sign_in,
)
from tests.provider import CLIENT_SECRET, TestProvider


def test_flows_log_no_secrets_and_only_json(
    log_stream: io.StringIO, make_relay: Any, provider: TestProvider
) -> None:
    """Logins that succeed and fail every which way, /auth, hostile cookies and a logout leave
    JSON lines only, and none holds a code, verifier, state, token, client secret, session
    secret or raw cookie value."""
    callbacks: list[str] = []
    cookies: list[str] = []

    def login(relay: TestClient) -> int:
        relay.cookies.clear()
        start = relay.get("/login", params={"rd": "/x"})
        cookies.append(relay.cookies["__Host-relay_session_login"])
        callbacks.append(callback_path(provider_redirect(provider, start.headers["location"])))
        response = relay.get(callbacks[-1])
        if "__Host-relay_session" in relay.cookies:
            cookies.append(relay.cookies["__Host-relay_session"])
        return response.status_code

    b = provider.behaviour
    with make_relay() as relay:
        assert login(relay) == 302
        assert relay.get(callbacks[-1]).status_code == 400  # replay
        assert relay.get("/auth").status_code == 200
        session_cookie = cookies[-1]
        failures = [
            ("id_token_claims", {"nonce": "wrong"}, 400),
            ("signing_key", RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}), 400),
            ("token_status", 500, 502),
            ("network_failures", {"/token": "timeout"}, 504),
            ("userinfo_claims", {"sub": "other"}, 400),
        ]
        for knob, value, status in failures:
            saved = getattr(b, knob)
            setattr(b, knob, value)
            assert login(relay) == status, knob
            setattr(b, knob, saved)
        relay.get("/callback", params={"state": "x", "code": "leaky-code", "error": "e"})
        relay.cookies.clear()
        relay.get("/auth", headers={"Cookie": "__Host-relay_session=forged-cookie-value"})
        relay.cookies.set("__Host-relay_session", session_cookie, domain="relay.test")
        relay.post("/logout", headers={"Origin": "https://relay.test"})

    output = log_stream.getvalue()
    secrets: dict[str, str] = {
        "client secret": CLIENT_SECRET,
        "session secret": SECRET,
        "crafted code": "leaky-code",
        "forged cookie": "forged-cookie-value",
    }
    for i, callback in enumerate(callbacks):
        secrets[f"code {i}"] = query(callback)["code"]
        secrets[f"state {i}"] = query(callback)["state"]
    for i, request in enumerate(provider.token_requests):
        secrets[f"verifier {i}"] = request["form"]["code_verifier"]
    for i, token in enumerate(provider.issued):
        secrets[f"token {i}"] = token
    for i, cookie in enumerate(cookies):
        secrets[f"cookie {i}"] = cookie
    for name, value in secrets.items():
        assert value not in output, name
    assert "eyJ" not in output  # no JWT anywhere
    # Nor what the database holds: sealed values (Fernet tokens start "gAAAAA"), full session
    # or state hashes (logs name them by 12 characters), nonces (43-character ids). At debug,
    # on SQLite and PostgreSQL both, this is where a driver logging its statements shows.
    assert "gAAAAA" not in output
    assert not re.search(r"\b[0-9a-f]{64}\b", output)
    for code, grant in provider.grants.items():
        assert code not in output
        assert grant.nonce and grant.nonce not in output

    events = log_lines(log_stream)
    assert all(isinstance(e, dict) and "event" in e for e in events)
    names = [e["event"] for e in events]
    for expected in ("login.started", "login.succeeded", "login.failed", "logout", "http.request"):
        assert expected in names
    reasons = {e["reason"] for e in events if e["event"] == "login.failed"}
    assert reasons == {
        "callback.unknown_state",
        "callback.provider_error",
        "id_token.nonce_mismatch",
        "id_token.bad_signature",
        "token.status_500",
        "token.timeout",
        "userinfo.sub_mismatch",
    }
    requests = [e for e in events if e["event"] == "http.request"]
    assert all(e["request_id"] and "?" not in e["path"] for e in requests)
    succeeded = next(e for e in events if e["event"] == "login.succeeded")
    assert len(succeeded["session"]) == 12


def test_redaction_masks_secret_keys(log_stream: io.StringIO) -> None:
    """A secret handed to the logger by mistake is masked by the pipeline."""
    structlog.get_logger("t").info("oops", code="abc", access_token="def", client_secret="ghi")
    [event] = [e for e in log_lines(log_stream) if e["event"] == "oops"]
    assert event["code"] == event["access_token"] == event["client_secret"] == "[redacted]"


def test_foreign_loggers_come_out_as_json(log_stream: io.StringIO) -> None:
    """uvicorn's (stdlib) log records go through the same JSON pipeline."""
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    [event] = [e for e in log_lines(log_stream) if "Started server" in e["event"]]
    assert event["event"] == "Started server process [42]" and event["level"] == "info"


def test_request_id_is_on_every_line_of_a_request(
    log_stream: io.StringIO, relay: TestClient
) -> None:
    """Lines logged while handling a request carry its id, which is also a response header."""
    response = relay.get("/login")
    rid = response.headers["x-request-id"]
    mine = [e for e in log_lines(log_stream) if e.get("request_id") == rid]
    assert {e["event"] for e in mine} == {"login.started", "http.request"}


def test_callback_refusal_reason_reaches_the_access_line(
    log_stream: io.StringIO, relay: TestClient
) -> None:
    """A refused /callback's access line names the reason (the handler runs in the request's
    context, not in a thread that lost it)."""
    relay.get("/callback", params={"code": "x"})
    [line] = [e for e in log_lines(log_stream) if e["event"] == "http.request"]
    assert line["status"] == 400 and line["reason"] == "callback.missing_state"


def test_a_refused_return_url_is_logged(log_stream: io.StringIO, relay: TestClient) -> None:
    """An rd outside redirects.allowed_hosts is replaced by the default, and said so."""
    relay.get("/login", params={"rd": "https://elsewhere.example/x"})
    [line] = [e for e in log_lines(log_stream) if e["event"] == "login.rd_refused"]
    assert line["rd"] == "https://elsewhere.example/x"
    assert "redirects.allowed_hosts" in line["hint"]


def test_a_cached_check_names_its_session_when_logged(
    log_stream: io.StringIO, make_relay: Any, provider: TestProvider
) -> None:
    """A successful /auth answered by the shortcut, when its line is written, names the
    session by its short hash like every other line."""
    with make_relay(logging={"auth_success_sample": 1.0}) as relay:
        sign_in(relay, provider)
        for _ in range(3):
            assert relay.get("/auth").status_code == 200
    succeeded = next(e for e in log_lines(log_stream) if e["event"] == "login.succeeded")
    checks = [e for e in log_lines(log_stream) if e.get("path") == "/auth"]
    assert len(checks) == 3
    assert all(e["session"] == succeeded["session"] for e in checks)


def test_an_issuer_mismatch_shows_both_issuers(
    log_stream: io.StringIO, make_relay: Any, provider: TestProvider
) -> None:
    """The discovery failure an operator fixes by copying a value names both values and
    the discovery URL, not just a reason slug."""
    provider.behaviour.discovery_overrides["issuer"] = "https://impostor.test"
    with make_relay() as relay:
        relay.get("/login")
    [line, *_] = [e for e in log_lines(log_stream) if e["event"] == "provider.unavailable"]
    assert line["reason"] == "discovery.issuer_mismatch"
    assert "'https://impostor.test'" in line["detail"] and "'https://idp.test'" in line["detail"]
    assert line["url"] == "https://idp.test/.well-known/openid-configuration"


def test_a_provider_that_calls_itself_otherwise_is_an_error_at_startup(
    log_stream: io.StringIO, make_relay: Any, provider: TestProvider
) -> None:
    """The first failed discovery at startup is said once, plainly (provider.unusable, with
    a hint naming provider.issuer); an issuer mismatch, which no retry fixes, at error
    level."""
    provider.behaviour.discovery_overrides["issuer"] = "https://impostor.test"
    with make_relay():
        deadline = time.monotonic() + 5
        while not any(e["event"] == "provider.unusable" for e in log_lines(log_stream)):
            assert time.monotonic() < deadline, "no provider.unusable line"
            time.sleep(0.01)
    [line] = [e for e in log_lines(log_stream) if e["event"] == "provider.unusable"]
    assert (line["level"], line["reason"]) == ("error", "discovery.issuer_mismatch")
    assert "'https://impostor.test'" in line["detail"] and "provider.issuer" in line["hint"]
