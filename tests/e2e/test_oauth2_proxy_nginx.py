"""oauth2-proxy's own nginx auth_request examples (tests/e2e/oauth2_proxy_nginx.conf, and the
older form with `error_page 401 =403`, oauth2_proxy_nginx_7_9.conf), changed only in
addresses, run in front of the relay and the real npm oidc-provider: a person in Chromium gets
through, the identity headers reach the app, and /oauth2/sign_out works.

The example sends the browser to /oauth2/sign_in?rd=$scheme://$host$request_uri; $host has no
port, so nginx listens on port 443 as the example does, on an address of its own in 127/8."""

from __future__ import annotations

import json
import random
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import Engine, create_engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import postgres_database, run_migrations
from tests.e2e.stack import (
    ROOT,
    Service,
    provider_service,
    replace_exactly,
    require,
    self_signed_certificate,
)
from tests.process import RelayProcess, free_port

pytestmark = pytest.mark.e2e

# Both forms oauth2-proxy has documented: the current one, whose named location answers 302,
# and the older one (up to 7.9.x) with `error_page 401 =403 /oauth2/sign_in;`.
EXAMPLES = {
    "current": Path(__file__).with_name("oauth2_proxy_nginx.conf"),
    "7.9": Path(__file__).with_name("oauth2_proxy_nginx_7_9.conf"),
}


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "headers": dict(request.headers)})


# The app behind nginx: it shows every header nginx sent it.
upstream = Starlette(routes=[Route("/{path:path}", _echo)])


@dataclass
class Site:
    url: str  # https://<address>, where nginx listens with the example's config
    issuer: str
    db: Engine
    form: str = "current"  # which of EXAMPLES

    @property
    def public_url(self) -> str:
        return self.url + "/oauth2"

    def sessions(self) -> int:
        with self.db.connect() as conn:
            query = text("SELECT count(*) FROM sessions WHERE status = 'active'")
            return int(conn.execute(query).scalar_one())


def example_site(
    form: str, address: str, relay_port: int, app_port: int, *, cert: Path, key: Path
) -> str:
    """The documented config with our addresses: nothing else is touched."""
    site = EXAMPLES[form].read_text()
    site = replace_exactly(site, "listen 443 ssl;", f"listen {address}:443 ssl;", 1)
    site = replace_exactly(site, "server_name ...;", f"server_name {address};", 1)
    tls = f"ssl_certificate {cert};\n  ssl_certificate_key {key};"
    site = replace_exactly(site, "include ssl/ssl.conf;", tls, 1)
    site = replace_exactly(site, "127.0.0.1:4180", f"127.0.0.1:{relay_port}", 2)
    return replace_exactly(site, "http://backend/", f"http://127.0.0.1:{app_port}/", 1)


class Listening(Service):
    """A Service that listens on an address other than 127.0.0.1."""

    def __init__(self, address: str, *args: Any) -> None:
        super().__init__(*args)
        self.address = address

    def start(self, port: int, cwd: Path | None = None) -> Service:
        assert self.proc is None
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection((self.address, port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)  # not listening yet
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {self.address}:{port}:\n{self.log()}")


def nginx(workdir: Path, address: str, site: str) -> Service:
    (workdir / "site.conf").write_text(site)
    temp = workdir / "nginx-temp"
    temp.mkdir(exist_ok=True)
    paths = "\n".join(
        f"    {kind}_temp_path {temp}/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    (workdir / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {temp}/body;
{paths}
    include {workdir}/site.conf;
}}
"""
    )
    return Listening(
        address, "nginx", [require("nginx"), "-c", str(workdir / "nginx.conf")], workdir
    )


def relay_config(workdir: Path, port: int, site: Site, database_url: str, secret: str) -> Path:
    path = workdir / "relay.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{site.public_url}"
trusted_proxies = ["127.0.0.1/32"]

[provider]
issuer = "{site.issuer}"
client_id = "oidc-relay"
client_secret = "{secret}"
post_logout_redirect_url = "{site.public_url}/"

[database]
url = "{database_url}"

[session]
secret = "e2e-session-secret-{"y" * 32}"
cookie_secure = true

[access]
email_domains = ["*"]
"""
    )
    return path


@pytest.fixture(scope="module", params=list(EXAMPLES))
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("oauth2-proxy-nginx")
    address = f"127.{random.randint(100, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"
    provider_port, relay_port, app_port = free_port(), free_port(), free_port()
    secret = secrets.token_urlsafe(24)
    services: list[Service] = []
    relay: RelayProcess | None = None
    with postgres_database() as database_url:
        # On a thread of its own: the second form's site is made while the module's Chromium
        # (Playwright keeps an event loop running) is open, and asyncio.run refuses to nest.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(run_migrations, database_url).result()
        s = Site(
            f"https://{address}",
            f"http://localhost:{provider_port}",
            create_engine(database_url),
            request.param,
        )
        cert, key = self_signed_certificate(workdir)
        try:
            provider = provider_service(
                workdir,
                provider_port,
                {
                    "ISSUER": s.issuer,
                    "CLIENT_SECRET": secret,
                    "REDIRECT_URIS": s.public_url + "/callback",
                    "POST_LOGOUT_URIS": s.public_url + "/",
                },
            )
            services.append(provider.start(provider_port))
            app = Service(
                "app",
                [sys.executable, "-m", "uvicorn", f"{__name__}:upstream", "--host", "127.0.0.1",
                 "--port", str(app_port), "--log-level", "warning"],
                workdir,
            )  # fmt: skip
            services.append(app.start(app_port, cwd=ROOT))
            relay = RelayProcess(relay_config(workdir, relay_port, s, database_url, secret))
            relay.start()
            conf = example_site(request.param, address, relay_port, app_port, cert=cert, key=key)
            services.append(nginx(workdir, address, conf).start(443))
            yield s
        finally:
            if relay is not None and relay.proc is not None:
                relay.stop()
            for service in reversed(services):
                service.stop()
            s.db.dispose()


@pytest.fixture
def page_context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile that may talk to this machine's loopback addresses only."""
    ctx = browser.new_context(ignore_https_errors=True)
    ctx.route(
        re.compile(r"^(?!https?://(127\.\d+\.\d+\.\d+|localhost)[:/]).*"), lambda r: r.abort()
    )
    yield ctx
    ctx.close()


def sign_in(page: Any, site: Site) -> dict[str, Any]:
    """Open the app; nginx sends the browser to /oauth2/sign_in, the relay to the provider's
    login and consent; back at the app, return what the app was sent."""
    page.goto(site.url + "/reports?q=1")
    page.wait_for_url(site.issuer + "/interaction/**")
    page.fill("input[name=login]", "alice")
    page.fill("input[name=password]", "correct horse battery staple")
    page.click("button[type=submit]")
    page.wait_for_url(site.issuer + "/interaction/**")  # consent
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/reports?q=1")
    seen: dict[str, Any] = json.loads(page.inner_text("body"))
    return seen


def test_a_person_gets_through_and_signs_out(site: Site, page_context: Any) -> None:
    """Through oauth2-proxy's documented nginx config: sign-in lands on the page first asked
    for, the app gets X-User and X-Email, GET /oauth2/sign_out only asks, and its button ends
    the session at the relay and at the provider."""
    page = page_context.new_page()
    seen = sign_in(page, site)
    assert seen["path"] == "/reports"
    assert seen["headers"]["x-user"] == "alice"
    assert seen["headers"]["x-email"] == "alice@example.com"
    assert "x-access-token" not in seen["headers"]  # the relay passes no access token (yet)
    assert site.sessions() == 1

    # A forged identity header from the browser is replaced by the one from /oauth2/auth.
    forged = page_context.request.get(site.url + "/", headers={"X-User": "mallory"})
    assert forged.json()["headers"]["x-user"] == "alice"

    page.goto(site.public_url + "/sign_out")
    assert site.sessions() == 1  # a GET ends nothing
    page.click("button[type=submit]")
    page.wait_for_url(site.issuer + "/session/end**")
    page.click("button[value=yes]")
    page.wait_for_url(site.public_url + "/")
    assert "Not signed in" in page.content()
    assert site.sessions() == 0

    # Signed out at the provider too: the app asks for a login again.
    page.goto(site.url + "/")
    page.wait_for_url(site.issuer + "/interaction/**")
    assert page.locator("input[name=login]").count() == 1


def test_sign_out_with_rd_goes_there(site: Site, page_context: Any) -> None:
    """oauth2-proxy's sign_out?rd=URL: the form carries rd, the POST ends the relay session and
    sends the browser to rd; a cross-site POST is refused."""
    page = page_context.new_page()
    sign_in(page, site)
    # An rd off the auth_request path: a protected page would send the browser straight back
    # through /oauth2/sign_in, and the provider, still signed in (as with oauth2-proxy's
    # sign_out?rd=), would sign it in again without asking.
    rd = site.public_url + "/"
    sign_out = site.public_url + "/sign_out?" + urlencode({"rd": rd})

    cross_site = page_context.request.post(
        sign_out, headers={"Origin": "https://evil.example"}, max_redirects=0
    )
    assert cross_site.status == 403
    assert site.sessions() == 1

    page.goto(sign_out)
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("button[type=submit]")
    assert posted.value.status == 303
    assert posted.value.headers["location"] == rd
    page.wait_for_url(rd)
    assert "Not signed in" in page.content()
    assert site.sessions() == 0
    # The app sits behind auth_request: without a session nginx sends the browser to sign in.
    signed_out = page_context.request.get(site.url + "/reports", max_redirects=0)
    if site.form == "current":
        assert signed_out.status == 302
        location = signed_out.headers["location"]
        assert location.endswith("/oauth2/sign_in?rd=" + site.url + "/reports")
    else:  # the relay's sign-in answer, its status turned into 403 by nginx, with a way on
        assert signed_out.status == 403
        assert signed_out.headers["location"].startswith(site.issuer + "/")
        assert "Continue to sign in" in signed_out.text()
