"""RequestContext on a tiny app of its own: request ids, the access line and its sampling,
and a crash answered inside the request's context."""

from __future__ import annotations

import io
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from relay.config import LoggingConfig
from relay.endpoints import Lifecycle
from relay.metrics import Metrics
from relay.middleware import RequestContext
from tests.conftest import log_lines


async def auth(request: Request) -> Response:
    return PlainTextResponse("")


async def crash(request: Request) -> Response:
    raise RuntimeError("boom")


def app(**logging_config: Any) -> Starlette:
    return Starlette(
        routes=[Route("/auth", auth), Route("/crash", crash)],
        middleware=[
            Middleware(
                RequestContext,
                metrics=Metrics(),
                logging=LoggingConfig(**logging_config),
                lifecycle=Lifecycle(),
            )
        ],
    )


def test_a_crash_is_a_500_page_with_the_request_id(log_stream: io.StringIO) -> None:
    """An unexpected exception answers 500 with the request id in header and body, and
    leaves one traceback line and one access line carrying that id."""
    with TestClient(app(), raise_server_exceptions=False) as client:
        response = client.get("/crash", headers={"Accept": "application/json"})
    assert response.status_code == 500
    rid = response.headers["x-request-id"]
    assert response.json() == {
        "error": "internal_error",
        "message": "Something went wrong.",
        "request_id": rid,
    }
    mine = [e for e in log_lines(log_stream) if e.get("request_id") == rid]
    assert [e["event"] for e in mine] == ["request.crashed", "http.request"]
    assert "RuntimeError: boom" in mine[0]["exception"]
    assert mine[1]["status"] == 500 and mine[1]["reason"] == "internal_error"
    assert "boom" not in response.text


def test_request_ids_are_unique_and_a_good_incoming_one_is_kept(log_stream: Any) -> None:
    """Each request gets its own id; a well-formed X-Request-ID from the proxy is kept, a
    malformed one replaced."""
    with TestClient(app()) as client:
        ids = {client.get("/auth").headers["x-request-id"] for _ in range(50)}
        kept = client.get("/auth", headers={"X-Request-ID": "proxy-id-1234"})
        bad = client.get("/auth", headers={"X-Request-ID": "bad id\x7f"})
    assert len(ids) == 50
    assert kept.headers["x-request-id"] == "proxy-id-1234"
    assert bad.headers["x-request-id"] != "bad id\x7f"


@pytest.mark.parametrize(("sample", "written"), [(1.0, 20), (0.0, 0)])
def test_successful_auth_lines_follow_the_sample(
    log_stream: io.StringIO, sample: float, written: int
) -> None:
    """auth_success_sample = 1 writes every successful /auth line, 0 none; refusals and
    other routes are always written."""
    with TestClient(app(auth_success_sample=sample), raise_server_exceptions=False) as client:
        for _ in range(20):
            client.get("/auth")
        client.get("/nope")
    access = [e for e in log_lines(log_stream) if e["event"] == "http.request"]
    assert len([e for e in access if e["path"] == "/auth"]) == written
    assert [e["status"] for e in access if e["path"] == "/nope"] == [404]


def test_a_sampled_line_says_what_it_stands_for(log_stream: io.StringIO) -> None:
    """Under sampling, the lines written carry sample_rate, so counts can be scaled back."""
    with TestClient(app(auth_success_sample=0.5)) as client:
        for _ in range(200):
            client.get("/auth")
    access = [e for e in log_lines(log_stream) if e["event"] == "http.request"]
    assert 40 < len(access) < 160
    assert all(e["sample_rate"] == 0.5 for e in access)


def test_no_context_leaks_between_test_client_requests(log_stream: io.StringIO) -> None:
    """The same holds in-process: a crash's reason does not reach the next request's line."""
    with TestClient(app(auth_success_sample=1.0), raise_server_exceptions=False) as client:
        assert client.get("/crash").status_code == 500
        assert client.get("/auth").status_code == 200
    access = [e for e in log_lines(log_stream) if e["event"] == "http.request"]
    assert [e["path"] for e in access] == ["/crash", "/auth"]
    assert "reason" in access[0] and "reason" not in access[1]
