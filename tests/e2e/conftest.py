"""One real stack for the end-to-end tests: PostgreSQL, the npm oidc-provider, the relay as
`relay serve`, an upstream app, nginx, Caddy and HAProxy in front of it — all on 127.0.0.1."""

from __future__ import annotations

import re
import secrets
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import Engine, create_engine, text

from tests.conftest import postgres_database, run_migrations
from tests.e2e.stack import (
    Service,
    caddy_root_certificate,
    caddy_service,
    haproxy_service,
    nginx_service,
    provider_service,
    self_signed_certificate,
    upstream_service,
    wait_for_tls,
)
from tests.process import RelayProcess, free_port

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ACCOUNT = "alice"
# What the e2e provider's resource server (e2e/provider/server.mjs) puts in its tokens' aud.
API_AUDIENCE = "https://api.example.test"
SESSION_SECRET = "e2e-session-secret-" + "x" * 32
# The [access] section every test runs under unless it asks for another (Stack.access_rules).
ANYONE = 'email_domains = ["*"]'


@dataclass
class Stack:
    workdir: Path
    database_url: str
    ports: dict[str, int]
    client_secret: str
    cert: Path | None = None
    relay: RelayProcess | None = None
    services: list[Service] = field(default_factory=list)
    db: Engine | None = None
    access: str = ANYONE

    @property
    def app_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['nginx']}"

    @property
    def caddy_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['caddy']}"

    @property
    def haproxy_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['haproxy']}"

    def client(
        self, source: str = "127.0.0.1", proxy: str = "nginx", **options: Any
    ) -> httpx2.Client:
        """An HTTP client whose connections come from ``source`` (any 127.x.y.z: nginx sees
        each as a client address of its own), trusting the proxy's certificate only."""
        cafile = caddy_root_certificate(self.workdir) if proxy == "caddy" else self.cert
        tls = ssl.create_default_context(cafile=str(cafile))
        transport = httpx2.HTTPTransport(verify=tls, local_address=source)
        options.setdefault("timeout", 15)
        return httpx2.Client(transport=transport, verify=tls, **options)

    @property
    def public_url(self) -> str:
        return self.app_url + "/oauth2"

    @property
    def pkj_url(self) -> str:
        """The public URL of the relay that authenticates with private_key_jwt."""
        return f"http://127.0.0.1:{self.ports['relay_pkj']}/oauth2"

    @property
    def signed_out_url(self) -> str:
        """Where a sign-out ends: the provider hands the relay's state back to its page."""
        return self.public_url + "/?state=signed-out"

    @property
    def issuer(self) -> str:
        return f"http://localhost:{self.ports['provider']}"

    def write_relay_config(self) -> Path:
        path = self.workdir / "relay.toml"
        path.write_text(
            f"""
[server]
host = "127.0.0.1"
port = {self.ports["relay"]}
public_url = "{self.public_url}"
trusted_proxies = ["127.0.0.1/32"]

[provider]
issuer = "{self.issuer}"
client_id = "oidc-relay"
client_secret = "{self.client_secret}"
# The provider runs on this machine's clock: a token's expiry is seen within 2 s.
clock_skew = "2s"

[database]
url = "{self.database_url}"

[session]
secret = "{SESSION_SECRET}"
cookie_secure = true

[bearer]
enabled = true
audiences = ["{API_AUDIENCE}"]
introspection = true

[access]
{self.access}

[admin]
allowed_groups = ["admins"]

[redirects]
allowed_hosts = [
    "127.0.0.1:{self.ports["nginx"]}",
    "127.0.0.1:{self.ports["caddy"]}",
    "127.0.0.1:{self.ports["haproxy"]}",
]
"""
        )
        return path

    def start_relay(self) -> None:
        self.relay = RelayProcess(self.write_relay_config())
        self.relay.start()

    def restart_relay(self) -> None:
        assert self.relay is not None
        self.relay.stop()
        self.start_relay()

    @contextmanager
    def access_rules(self, rules: str) -> Iterator[None]:
        """The relay restarted with ``rules`` as its [access] section (TOML, subtables
        included), and restarted with the usual rules afterwards, whatever happened."""
        self.access = rules
        try:
            self.restart_relay()
            yield
        finally:
            self.access = ANYONE
            self.restart_relay()

    def sessions_of(self, subject: str) -> int:
        """How many active sessions ``subject`` has at the relay."""
        assert self.db is not None
        with self.db.connect() as conn:
            query = text("SELECT count(*) FROM sessions WHERE status = 'active' AND subject = :s")
            return int(conn.execute(query, {"s": subject}).scalar_one())

    def sessions(self, status: str = "active") -> int:
        assert self.db is not None
        with self.db.connect() as conn:
            query = text("SELECT count(*) FROM sessions WHERE status = :s")
            return int(conn.execute(query, {"s": status}).scalar_one())


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e")
    names = (
        "provider", "relay", "upstream", "nginx", "nginx_http", "caddy", "caddy_http",
        "haproxy", "haproxy_http", "relay_pkj",
    )  # fmt: skip
    ports = {name: free_port() for name in names}
    with postgres_database() as url:
        run_migrations(url)
        s = Stack(workdir, url, ports, client_secret=secrets.token_urlsafe(24))
        s.db = create_engine(url)
        cert, key = self_signed_certificate(workdir)
        s.cert = cert
        try:
            provider = provider_service(
                workdir,
                ports["provider"],
                {
                    "ISSUER": s.issuer,
                    "CLIENT_SECRET": s.client_secret,
                    # The second: a relay that authenticates with a key (test_private_key_jwt).
                    "REDIRECT_URIS": f"{s.public_url}/callback,{s.pkj_url}/callback",
                    "PKJ_JWKS_URI": s.pkj_url + "/jwks.json",
                    "POST_LOGOUT_URIS": s.public_url + "/",
                    "BACKCHANNEL_URI": f"http://127.0.0.1:{ports['relay']}/oauth2/backchannel-logout",
                },
            )
            s.services.append(provider.start(ports["provider"]))
            s.services.append(upstream_service(workdir, ports["upstream"]).start(ports["upstream"]))
            s.start_relay()
            nginx_ports = (ports["nginx"], ports["nginx_http"])
            nginx = nginx_service(
                workdir, nginx_ports, ports["relay"], ports["upstream"], tls=(cert, key)
            )
            s.services.append(nginx.start(ports["nginx"]))
            caddy_ports = (ports["caddy"], ports["caddy_http"])
            caddy = caddy_service(workdir, caddy_ports, ports["relay"], ports["upstream"])
            s.services.append(caddy.start(ports["caddy"]))
            wait_for_tls(ports["caddy"], caddy_root_certificate(workdir))
            haproxy_ports = (ports["haproxy"], ports["haproxy_http"])
            haproxy = haproxy_service(
                workdir, haproxy_ports, ports["relay"], ports["upstream"], tls=(cert, key)
            )
            s.services.append(haproxy.start(ports["haproxy"]))
            yield s
        finally:
            if s.relay is not None and s.relay.proc is not None:
                s.relay.stop()
            for service in reversed(s.services):
                service.stop()
            s.db.dispose()


def introspect(issuer: str, secret: str, token: str, **form: str) -> dict[str, Any]:
    """What the provider's introspection (RFC 7662) says of a token, asked as the relay's
    client ``oidc-relay`` with ``secret``."""
    response = httpx2.post(
        issuer + "/token/introspection",
        data={"token": token, **form},
        auth=("oidc-relay", secret),
        timeout=15,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def form(page: str) -> tuple[str, dict[str, str]]:
    """The first form on a page: its action and its named inputs' values."""
    match = re.search(r'<form[^>]*action="([^"]+)"', page)
    assert match, page[:500]
    inputs = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page))
    return match.group(1), inputs


def scripted_login(client: httpx2.Client, url: str, account: str = ACCOUNT) -> httpx2.Response:
    """Sign in the way a browser would, without one: follow the redirects to the provider,
    submit its login and consent forms, and come back through /callback to ``url``."""
    page = client.get(url, headers={"Accept": "text/html"})
    for prompt in ("login", "consent"):
        action, fields = form(page.text)
        assert fields.get("prompt") == prompt, page.text[:500]
        if prompt == "login":
            fields |= {"login": account, "password": "any"}
        page = client.post(str(page.url.join(action)), data=fields)
    return page


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx2.Client]:
    """A cookie-keeping HTTP client that trusts nginx's self-signed certificate (and only it)."""
    with stack.client(follow_redirects=True) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Playwright's sync API keeps an event loop running while
    it is open, so it must be closed before tests that call asyncio.run() come along."""
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync",
            ],
        )  # fmt: skip
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile that may talk to this machine only."""
    ctx = browser.new_context(ignore_https_errors=True)
    ctx.route(
        re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"),
        lambda route: route.abort(),
    )
    yield ctx
    ctx.close()
