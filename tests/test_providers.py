"""Several providers on one relay ([[providers]]): which one a login uses (?provider=, the
host the person is going to, a chooser), each session refreshing and signing out against its
own, back-channel logout routed by issuer, a callback held to the provider its login went to,
and Entra ID's multi-tenant issuer with a tenant allow-list."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import ConfigError, config_from_mapping
from tests.conftest import (
    PUBLIC_URL,
    SECRET,
    FakeClock,
    callback_path,
    query,
    touches_written,
    warm_started,
)
from tests.provider import CLIENT_ID, CLIENT_SECRET, ProviderTransport, TestProvider

OTHER = "https://idp2.test"


class Transport(httpx2.AsyncBaseTransport):
    """Each request to the provider its host names."""

    def __init__(self, *providers: TestProvider) -> None:
        self._by_host = {urlsplit(p.issuer).netloc: ProviderTransport(p) for p in providers}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._by_host[request.url.netloc.decode()].handle_async_request(request)


def entry(issuer: str, name: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **more,
    }


def config(database_url: str, providers: list[dict[str, Any]], **sections: Any) -> Any:
    data: dict[str, Any] = {
        "server": {"public_url": PUBLIC_URL, "trusted_proxies": ["127.0.0.1/32"]},
        "providers": providers,
        "database": {"url": database_url},
        "session": {"secret": SECRET},
        "redirects": {"allowed_hosts": ["app.test", "partners.test"]},
        "access": {"email_domains": ["*"]},
        **sections,
    }
    return config_from_mapping(data, env={})


@pytest.fixture
def second(clock: FakeClock) -> TestProvider:
    other = TestProvider(clock, issuer=OTHER)
    other.subject = "partner-1"
    other.profile = {**other.profile, "email": "pat@partner.test"}
    return other


@pytest.fixture
def two(
    database_url: str, provider: TestProvider, second: TestProvider, clock: FakeClock
) -> Iterator[TestClient]:
    """A relay with two providers: app.test's logins go to the first, partners.test's to
    the second."""
    with relay_for(
        config(
            database_url,
            [
                entry(provider.issuer, "corp", label="Corporate", hosts=["app.test"]),
                entry(OTHER, "partners", label="Partners", hosts=["partners.test"]),
            ],
        ),
        Transport(provider, second),
        clock,
    ) as client:
        yield client


@contextmanager
def relay_for(cfg: Any, transport: Any, clock: FakeClock) -> Iterator[TestClient]:
    app = create_app(cfg, transport=transport, clock=clock, run_pruner_task=False)
    with TestClient(
        app, base_url=PUBLIC_URL, follow_redirects=False, client=("127.0.0.1", 40000)
    ) as client:
        warm_started(client)
        yield client


def login(client: TestClient, provider: TestProvider, app: Any = None, **params: str) -> Any:
    """/login with ``params``; the provider it went to signs its subject in; the callback."""
    start = client.get("/login", params=params)
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    assert location.startswith(provider.issuer + "/"), location
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(provider.issuer))
    with TestClient(app or provider.app, base_url=origin, follow_redirects=False) as browser:
        parts = urlsplit(location)
        answer = browser.get(parts.path + "?" + parts.query)
    return client.get(callback_path(answer.headers["location"]))


def providers_of_sessions(db: Engine) -> list[tuple[str, str]]:
    with db.connect() as conn:
        rows = conn.execute(
            text("SELECT subject, provider FROM sessions WHERE status = 'active' ORDER BY 1")
        )
        return [(row.subject, row.provider) for row in rows]


def test_the_host_the_person_is_going_to_chooses_the_provider(
    two: TestClient, provider: TestProvider, second: TestProvider, db: Engine
) -> None:
    """rd on partners.test goes to the second provider, rd on app.test to the first; each
    session records its own."""
    assert login(two, second, rd="https://partners.test/x").status_code == 302
    two.cookies.clear()
    assert login(two, provider, rd="https://app.test/y").status_code == 302
    assert providers_of_sessions(db) == [
        ("partner-1", OTHER),
        (provider.subject, provider.issuer),
    ]


def test_the_forwarded_host_chooses_when_the_return_url_does_not(
    two: TestClient, second: TestProvider
) -> None:
    """nginx's @login hands /login the app's host as X-Forwarded-Host."""
    response = two.get(
        "/login", headers={"X-Forwarded-Host": "partners.test", "X-Forwarded-Proto": "https"}
    )
    assert response.headers["location"].startswith(OTHER + "/")


def test_provider_names_one_and_an_unknown_name_is_a_400(
    two: TestClient, second: TestProvider
) -> None:
    """?provider= wins over the host; a name no provider has is refused, never guessed."""
    start = two.get("/login", params={"provider": "partners", "rd": "https://app.test/"})
    assert start.headers["location"].startswith(OTHER + "/")
    assert two.get("/login", params={"provider": "nobody"}).status_code == 400


def test_without_a_hint_the_person_chooses(two: TestClient) -> None:
    """A page with one link per provider, each carrying the return URL and the step-up."""
    page = two.get("/login", params={"rd": "https://elsewhere.test/", "acr": "urn:mfa"})
    assert page.status_code == 200
    assert "Corporate" in page.text and "Partners" in page.text
    assert "provider=partners" in page.text and "acr=urn%3Amfa" in page.text
    assert "rd=https%3A%2F%2Felsewhere.test%2F" in page.text


def test_each_session_refreshes_against_its_own_provider(
    two: TestClient,
    provider: TestProvider,
    second: TestProvider,
    clock: FakeClock,
) -> None:
    """When the access tokens are due, each provider gets its own session's refresh."""
    login(two, second, rd="https://partners.test/")
    partner = dict(two.cookies)
    two.cookies.clear()
    login(two, provider, rd="https://app.test/")
    corp = dict(two.cookies)
    clock.advance(3600)
    for cookies in (partner, corp):
        two.cookies.clear()
        two.cookies.update(cookies)
        assert two.get("/auth").status_code == 200
        touches_written(two)
    assert len(second.refresh_requests) == 1
    assert len(provider.refresh_requests) == 1


def test_a_sign_out_goes_to_the_sessions_own_provider(
    two: TestClient, provider: TestProvider, second: TestProvider
) -> None:
    """RP-Initiated Logout and the RFC 7009 revocation at the second provider, for its
    session, not at the default one."""
    login(two, second, rd="https://partners.test/")
    out = two.post("/logout", headers={"Origin": PUBLIC_URL})
    assert out.status_code == 303
    assert out.headers["location"].startswith(OTHER + "/end_session?")
    assert query(out.headers["location"])["client_id"] == CLIENT_ID
    assert second.calls["revoke"] == 1 and provider.calls["revoke"] == 0


def test_back_channel_logout_is_routed_by_issuer(
    two: TestClient, provider: TestProvider, second: TestProvider, db: Engine
) -> None:
    """A logout token from the second provider ends its session; one that claims the second
    issuer but is signed with the first's key is refused."""
    login(two, second, rd="https://partners.test/")
    two.cookies.clear()
    login(two, provider, rd="https://app.test/")
    second.subject = "partner-1"
    forged = provider.logout_token(iss=OTHER, sub="partner-1")
    assert two.post("/backchannel-logout", data={"logout_token": forged}).status_code == 400
    token = second.logout_token(sub="partner-1")
    assert two.post("/backchannel-logout", data={"logout_token": token}).status_code == 200
    assert providers_of_sessions(db) == [(provider.subject, provider.issuer)]


def test_a_callback_is_held_to_the_provider_its_login_went_to(
    two: TestClient, provider: TestProvider, second: TestProvider
) -> None:
    """Mix-up: a login sent to the first provider whose response comes back with the second
    provider's iss and code is refused."""
    start = two.get("/login", params={"rd": "https://app.test/"})
    state = query(start.headers["location"])["state"]
    with TestClient(second.app, base_url=OTHER, follow_redirects=False) as browser:
        params = query(start.headers["location"])
        params["client_id"] = CLIENT_ID
        answer = browser.get("/authorize", params=params)
    forged = query(answer.headers["location"])
    assert forged["state"] == state and forged["iss"] == OTHER
    response = two.get(callback_path(answer.headers["location"]))
    assert response.status_code == 400
    assert second.calls["token"] == 0


def test_a_single_provider_config_works_as_written(relay: TestClient, provider: Any) -> None:
    """[provider] alone: no chooser, straight to it."""
    assert relay.get("/login").headers["location"].startswith(provider.issuer + "/")


# -- configuration ---------------------------------------------------------------------------


def test_both_forms_at_once_or_duplicates_stop_startup(database_url: str) -> None:
    """[provider] beside [[providers]]; two providers with one name, issuer or host."""
    with pytest.raises(ConfigError) as caught:
        config(
            database_url,
            [entry("https://a.test", "a")],
            provider=entry("https://b.test", "b"),
        )
    assert caught.value.lines == ["provider: give either [provider] or [[providers]], not both"]
    with pytest.raises(ConfigError) as caught:
        config(
            database_url,
            [
                entry("https://a.test", "a", hosts=["app.test"]),
                entry("https://a.test", "a", hosts=["app.test"]),
            ],
        )
    assert sorted(line.split(":")[0] for line in caught.value.lines) == [
        "providers[1].host",
        "providers[1].issuer",
        "providers[1].name",
    ]


def test_a_providers_secret_comes_from_its_environment_variable(database_url: str) -> None:
    """RELAY_PROVIDERS__<NAME>__CLIENT_SECRET sets that provider's secret only."""
    data: dict[str, Any] = {
        "server": {"public_url": PUBLIC_URL},
        "providers": [
            {"name": "corp", "issuer": "https://a.test", "client_id": "x"},
            {"name": "partners", "issuer": "https://b.test", "client_id": "y"},
        ],
        "database": {"url": database_url},
        "session": {"secret": SECRET},
        "access": {"email_domains": ["*"]},
    }
    env = {
        "RELAY_PROVIDERS__corp__CLIENT_SECRET": "corp-secret-0123456789",
        "RELAY_PROVIDERS__partners__CLIENT_SECRET": "partner-secret-0123456789",
    }
    cfg = config_from_mapping(data, env)
    secrets = [p.client_secret.get_secret_value() for p in cfg.providers if p.client_secret]
    assert secrets == ["corp-secret-0123456789", "partner-secret-0123456789"]
    assert "client_secret" not in data["providers"][0]  # the caller's data is left alone


# -- Entra ID's multi-tenant issuer ------------------------------------------------------------

ENTRA = "https://login.microsoftonline.com/organizations/v2.0"
TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"
ALLOWED, STRANGER = "11111111-aaaa-4bbb-8ccc-000000000001", "22222222-aaaa-4bbb-8ccc-000000000002"


class Entra(httpx2.AsyncBaseTransport):
    """The test provider served under Entra ID's multi-tenant path."""

    def __init__(self, idp: TestProvider) -> None:
        self.idp = idp
        self.app = Starlette(routes=[Mount(urlsplit(ENTRA).path, app=idp.app)])
        self._asgi = httpx2.ASGITransport(app=self.app)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._asgi.handle_async_request(request)


@pytest.fixture
def entra(clock: FakeClock, database_url: str) -> Iterator[tuple[TestClient, Entra]]:
    idp = TestProvider(clock, issuer=ENTRA)
    idp.behaviour.discovery_overrides["issuer"] = TEMPLATE
    served = Entra(idp)
    cfg = config(database_url, [entry(ENTRA, "entra", tenants=[ALLOWED])])
    with relay_for(cfg, served, clock) as client:
        yield client, served


def test_an_allowed_tenant_signs_in_with_its_own_issuer(
    entra: tuple[TestClient, Entra], db: Engine
) -> None:
    """The document says {tenantid}; the token its tenant's issuer and tid: accepted, and
    the session records that tenant's issuer."""
    client, served = entra
    tenant_issuer = TEMPLATE.replace("{tenantid}", ALLOWED)
    served.idp.behaviour.id_token_claims = {"tid": ALLOWED, "iss": tenant_issuer}
    assert login(client, served.idp, served.app).status_code == 302
    assert providers_of_sessions(db) == [(served.idp.subject, tenant_issuer)]


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"tid": STRANGER, "iss": TEMPLATE.replace("{tenantid}", STRANGER)}, "another tenant"),
        ({"tid": ALLOWED, "iss": TEMPLATE.replace("{tenantid}", STRANGER)}, "iss of another"),
        ({"iss": TEMPLATE.replace("{tenantid}", ALLOWED)}, "no tid"),
        ({"tid": ALLOWED, "iss": TEMPLATE}, "the placeholder itself"),
    ],
)
def test_any_other_tenant_is_refused(
    entra: tuple[TestClient, Entra], claims: dict[str, Any], why: str
) -> None:
    """Only the allowed tenants, each with its own issuer exactly."""
    client, served = entra
    served.idp.behaviour.id_token_claims = claims
    assert login(client, served.idp, served.app).status_code == 400, why


def test_tenants_need_a_multi_tenant_issuer(database_url: str) -> None:
    """tenants with an issuer that has no common/organizations segment stops startup."""
    with pytest.raises(ConfigError) as caught:
        config(database_url, [entry("https://idp.test", "a", tenants=[ALLOWED])])
    assert "tenants" in caught.value.lines[0]
