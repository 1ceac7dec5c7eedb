"""Logs: one JSON object per line, named events, a request id, and never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import structlog
from starlette.testclient import TestClient

from relay.logs import configure_logging
from tests.conftest import SECRET, callback_path, provider_redirect, query
from tests.provider import CLIENT_SECRET, TestProvider


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    yield stream
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = []


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_flows_log_no_secrets_and_only_json(
    log_stream: io.StringIO, make_relay: Any, provider: TestProvider
) -> None:
    """A login, a failed callback, /auth and a logout leave JSON lines with no code, verifier,
    token, client secret, session secret or raw cookie value in them."""
    with make_relay() as relay:
        start = relay.get("/login", params={"rd": "/x"})
        callback = callback_path(provider_redirect(provider, start.headers["location"]))
        assert relay.get(callback).status_code == 302
        assert relay.get(callback).status_code == 400  # replay: a login.failed line
        assert relay.get("/auth").status_code == 200
        relay.get("/callback?" + urlencode({"state": "x", "code": "leaky-code", "error": "e"}))
        session_cookie = relay.cookies["__Host-relay_session"]
        login_cookie = relay.cookies["__Host-relay_session_login"]
        relay.post("/logout", headers={"Origin": "https://relay.test"})

    output = log_stream.getvalue()
    exchange = provider.token_requests[0]
    secrets = {
        "authorization code": query(callback)["code"],
        "state": query(callback)["state"],
        "code verifier": exchange["form"]["code_verifier"],
        "client secret": CLIENT_SECRET,
        "session secret": SECRET,
        "session cookie": session_cookie,
        "login cookie": login_cookie,
        "crafted code": "leaky-code",
    }
    for name, value in secrets.items():
        assert value not in output, name
    assert "eyJ" not in output  # no JWT (ID token) anywhere
    assert "at-" not in output and "rt-" not in output

    events = lines(log_stream)
    assert all(isinstance(e, dict) and "event" in e for e in events)
    names = [e["event"] for e in events]
    for expected in ("login.started", "login.succeeded", "login.failed", "logout", "http.request"):
        assert expected in names
    failed = [e for e in events if e["event"] == "login.failed"]
    assert {e["reason"] for e in failed} == {"callback.unknown_state", "callback.provider_error"}
    requests = [e for e in events if e["event"] == "http.request"]
    assert all(e["request_id"] and "?" not in e["path"] for e in requests)
    succeeded = next(e for e in events if e["event"] == "login.succeeded")
    assert len(succeeded["session"]) == 12


def test_redaction_masks_secret_keys(log_stream: io.StringIO) -> None:
    """A secret handed to the logger by mistake is masked by the pipeline."""
    structlog.get_logger("t").info("oops", code="abc", access_token="def", client_secret="ghi")
    [event] = [e for e in lines(log_stream) if e["event"] == "oops"]
    assert event["code"] == event["access_token"] == event["client_secret"] == "[redacted]"


def test_foreign_loggers_come_out_as_json(log_stream: io.StringIO) -> None:
    """uvicorn's (stdlib) log records go through the same JSON pipeline."""
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    [event] = [e for e in lines(log_stream) if "Started server" in e["event"]]
    assert event["event"] == "Started server process [42]" and event["level"] == "info"


def test_request_id_is_on_every_line_of_a_request(
    log_stream: io.StringIO, relay: TestClient
) -> None:
    """Lines logged while handling a request carry its id, which is also a response header."""
    response = relay.get("/login")
    rid = response.headers["x-request-id"]
    mine = [e for e in lines(log_stream) if e.get("request_id") == rid]
    assert {e["event"] for e in mine} == {"login.started", "http.request"}
