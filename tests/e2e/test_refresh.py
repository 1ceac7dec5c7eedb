"""Refresh against the real provider: a person signed in with Chromium through nginx keeps
loading the app while the npm oidc-provider's short-lived access token is refreshed behind
the scenes (grant_type=refresh_token, with the ID token oidc-provider sends). The stack is
built by ``stack``, which test_refresh_slow.py shares."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import postgres_database, run_migrations
from tests.e2e.conftest import Stack
from tests.e2e.stack import (
    nginx_service,
    provider_service,
    self_signed_certificate,
    upstream_service,
)
from tests.e2e.test_browser import sign_in
from tests.process import RelayProcess, free_port

pytestmark = pytest.mark.e2e

TTL = 4  # seconds the provider's access tokens live here
MARGIN = 1  # [refresh] margin: a token is refreshed TTL - MARGIN seconds after it is issued


@pytest.fixture(scope="module")
def short_lived(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own (the shared one keeps the provider's hour-long tokens): PostgreSQL,
    the provider with ACCESS_TOKEN_TTL, the upstream app, the relay, nginx."""
    with stack(tmp_path_factory.mktemp("e2e-refresh")) as s:
        yield s


@contextmanager
def stack(
    workdir: Path,
    provider_env: dict[str, str] | None = None,
    relay_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    # No Caddy nor HAProxy here, but Stack's relay config names their ports among the allowed
    # hosts.
    names = ("provider", "relay", "upstream", "nginx", "nginx_http", "caddy", "haproxy")
    ports = {name: free_port() for name in names}
    with postgres_database() as url:
        run_migrations(url)
        s = Stack(workdir, url, ports, client_secret=secrets.token_urlsafe(24))
        s.db = create_engine(url)
        cert, key = self_signed_certificate(workdir)
        s.cert = cert
        try:
            env = {
                "ISSUER": s.issuer,
                "CLIENT_SECRET": s.client_secret,
                "REDIRECT_URIS": s.public_url + "/callback",
                "POST_LOGOUT_URIS": s.public_url + "/",
                "ACCESS_TOKEN_TTL": str(TTL),
                **(provider_env or {}),
            }
            s.services.append(
                provider_service(workdir, ports["provider"], env).start(ports["provider"])
            )
            s.services.append(upstream_service(workdir, ports["upstream"]).start(ports["upstream"]))
            config = s.write_relay_config()
            config.write_text(config.read_text() + f'\n[refresh]\nmargin = "{MARGIN}s"\n')
            s.relay = RelayProcess(config, relay_env)
            s.relay.start()
            nginx = nginx_service(
                workdir,
                (ports["nginx"], ports["nginx_http"]),
                ports["relay"],
                ports["upstream"],
                tls=(cert, key),
            )
            s.services.append(nginx.start(ports["nginx"]))
            yield s
        finally:
            if s.relay is not None and s.relay.proc is not None:
                s.relay.stop()
            for service in reversed(s.services):
                service.stop()
            s.db.dispose()


def access_expiry(stack: Stack) -> int:
    assert stack.db is not None
    with stack.db.connect() as conn:
        query = text("SELECT access_expires_at FROM sessions WHERE status = 'active'")
        return int(conn.execute(query).scalar_one())


def test_the_page_keeps_loading_while_the_access_token_is_refreshed(
    short_lived: Stack, context: Any
) -> None:
    """Sign in; keep reloading the app through nginx until the relay has refreshed the
    provider's access token (the row's expiry moves on, refresh.succeeded is logged), at most
    a few token lifetimes; every load shows the app, signed in, and the refresh goes on."""
    stack = short_lived
    page = context.new_page()
    sign_in(page, stack)
    first = access_expiry(stack)
    assert first <= time.time() + TTL + 1  # the provider's short lifetime reached the row
    deadline = time.monotonic() + 4 * TTL
    refreshes = 0
    while refreshes < 2:  # the first, and a second with the rotated refresh token
        assert time.monotonic() < deadline, "no refresh within four token lifetimes"
        page.reload()
        assert page.url == stack.app_url + "/"
        assert page.inner_text("#email") == "alice@example.com"
        assert stack.relay is not None
        refreshes = sum(e["event"] == "refresh.succeeded" for e in stack.relay.collect())
    assert access_expiry(stack) > first
    failed = [e for e in stack.relay.collect() if e["event"] == "refresh.failed"]
    assert failed == []
