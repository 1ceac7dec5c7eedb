"""Access rules: who may pass, at login and at every /auth, narrowed per app by forwarded host
or /auth's query string; and the identity headers the app then receives."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from relay.access import Access
from relay.config import AccessConfig, ConfigError, config_from_mapping
from relay.headers import IdentityHeaders
from relay.store.records import ActiveSession
from tests.conftest import PUBLIC_URL, callback_path, log_lines, provider_redirect, sign_in
from tests.provider import TestProvider
from tests.test_config import GOOD

ALICE: dict[str, Any] = {
    "sub": "user-1",
    "email": "alice@example.com",
    "email_verified": True,
    "groups": ["admins", "staff"],
}


def judge(claims: dict[str, Any], host: str | None = None, query: str = "", **rules: Any) -> Any:
    refused = Access(AccessConfig(**rules)).refusal(claims, host, query)
    return None if refused is None else refused.reason


@pytest.mark.parametrize(
    ("rules", "claims", "expected"),
    [
        ({"email_domains": ["example.com"]}, {}, None),
        ({"email_domains": ["EXAMPLE.com"]}, {"email": "Alice@Example.COM"}, None),
        ({"email_domains": ["example.org"]}, {}, "access.email_not_allowed"),
        # A domain names that domain: not its subdomains, not a suffix.
        (
            {"email_domains": ["example.com"]},
            {"email": "a@dev.example.com"},
            "access.email_not_allowed",
        ),
        (
            {"email_domains": ["example.com"]},
            {"email": "a@badexample.com"},
            "access.email_not_allowed",
        ),
        ({"email_domains": ["*.example.com"]}, {"email": "a@dev.example.com"}, None),
        (
            {"email_domains": ["*.example.com"]},
            {"email": "a@example.com"},
            "access.email_not_allowed",
        ),
        (
            {"email_domains": ["*.example.com"]},
            {"email": "a@evilexample.com"},
            "access.email_not_allowed",
        ),
        # "*" is anyone the provider signs in, with or without an address.
        ({"email_domains": ["*"]}, {"email": None}, None),
        ({"allowed_emails": ["alice@example.com"]}, {}, None),
        ({"allowed_emails": ["bob@example.com"]}, {}, "access.email_not_allowed"),
        # allowed_emails and email_domains are or'ed, as in oauth2-proxy.
        ({"email_domains": ["example.org"], "allowed_emails": ["ALICE@example.com"]}, {}, None),
        ({"email_domains": ["example.com"]}, {"email": None}, "access.email_missing"),
        ({"email_domains": ["example.com"]}, {"email": "a@b@example.com"}, "access.email_missing"),
        # OIDC Core 5.1: an address the provider has not verified is anybody's.
        ({"email_domains": ["example.com"]}, {"email_verified": False}, "access.email_unverified"),
        (
            {"email_domains": ["example.com"]},
            {"email_verified": "false"},
            "access.email_unverified",
        ),
        (
            {"email_domains": ["example.com"], "allow_unverified_email": True},
            {"email_verified": False},
            None,
        ),
        ({"allowed_groups": ["staff"]}, {}, None),
        ({"allowed_groups": ["auditors", "admins"]}, {}, None),
        ({"allowed_groups": ["auditors"]}, {}, "access.group_not_allowed"),
        ({"allowed_groups": ["staff"]}, {"groups": None}, "access.group_not_allowed"),
        ({"allowed_groups": ["staff"]}, {"groups": "staff"}, None),
        ({"allowed_groups": ["staff"]}, {"groups": {"staff": True}}, "access.group_not_allowed"),
        # Every part a rule set names must pass: the email and the group.
        (
            {"email_domains": ["example.com"], "allowed_groups": ["auditors"]},
            {},
            "access.group_not_allowed",
        ),
        (
            {"email_domains": ["example.org"], "allowed_groups": ["staff"]},
            {},
            "access.email_not_allowed",
        ),
        ({"required_claims": {"email_verified": True}}, {}, None),
        (
            {"required_claims": {"email_verified": True}},
            {"email_verified": False},
            "access.claim_mismatch",
        ),
        (
            {"required_claims": {"email_verified": True}},
            {"email_verified": None},
            "access.claim_mismatch",
        ),
        # Strictly typed: 1 is not true, "true" is not true.
        (
            {"required_claims": {"email_verified": True}},
            {"email_verified": 1},
            "access.claim_mismatch",
        ),
        (
            {"required_claims": {"email_verified": True}},
            {"email_verified": "true"},
            "access.claim_mismatch",
        ),
        ({"required_claims": {"acr": "mfa"}}, {"acr": "mfa"}, None),
        ({"required_claims": {"amr": "otp"}}, {"amr": ["pwd", "otp"]}, None),
        ({"required_claims": {"amr": "otp"}}, {"amr": ["pwd"]}, "access.claim_mismatch"),
        ({"required_claims": {"org.tier": 2}}, {"org": {"tier": 2}}, None),
        ({"required_claims": {"org.tier": 2}}, {"org": {"tier": 3}}, "access.claim_mismatch"),
    ],
)
def test_the_rules(rules: dict[str, Any], claims: dict[str, Any], expected: str | None) -> None:
    """Each rule of [access], judged on a user's claims."""
    assert judge(ALICE | claims, **rules) == expected


def test_groups_come_from_a_dotted_groups_claim() -> None:
    """groups_claim reaches nested claims, such as Keycloak's realm_access.roles."""
    claims = {"email": "a@example.com", "realm_access": {"roles": ["editor", 7]}}
    rules = {"allowed_groups": ["editor"], "groups_claim": "realm_access.roles"}
    assert judge(claims, **rules) is None
    assert judge(claims | {"realm_access": {"roles": ["viewer"]}}, **rules) == (
        "access.group_not_allowed"
    )
    assert judge(claims | {"realm_access": "editor"}, **rules) == "access.group_not_allowed"
    assert Access(AccessConfig(**rules)).groups(claims) == ["editor"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", None),
        ("allowed_groups=admins", None),
        ("allowed_groups=auditors,admins", None),
        ("allowed_groups=auditors", "access.group_not_allowed"),
        # A rule given twice is two rules, each of which must pass (oauth2-proxy reads only the
        # first; or'ing them would let a second occurrence widen the first).
        ("allowed_groups=auditors&allowed_groups=staff", "access.group_not_allowed"),
        ("allowed_groups=staff&allowed_groups=auditors", "access.group_not_allowed"),
        ("allowed_groups=staff&allowed_groups=admins", None),
        (
            "allowed_emails=bob@example.com&allowed_emails=alice@example.com",
            "access.email_not_allowed",
        ),
        (
            "allowed_email_domains=example.com&allowed_email_domains=example.org",
            "access.email_not_allowed",
        ),
        ("allowed_emails=alice@example.com", None),
        ("allowed_emails=bob@example.com", "access.email_not_allowed"),
        ("allowed_email_domains=example.com", None),
        ("allowed_email_domains=example.org", "access.email_not_allowed"),
        # Each narrowing given must pass, as with oauth2-proxy's /oauth2/auth: also the
        # addresses and the domains, which the config's own rule or's.
        ("allowed_groups=admins&allowed_email_domains=example.org", "access.email_not_allowed"),
        (
            "allowed_emails=bob@example.com&allowed_email_domains=example.com",
            "access.email_not_allowed",
        ),
        (
            "allowed_emails=alice@example.com&allowed_email_domains=example.org",
            "access.email_not_allowed",
        ),
        ("allowed_emails=alice@example.com&allowed_email_domains=example.com", None),
        ("allowed_email_domains=*", None),
        # An empty rule (an unset variable in the proxy's config) is not "no rule".
        ("allowed_groups=", "access.empty_rule"),
        ("allowed_groups=%20,%20", "access.empty_rule"),
        ("allowed_groups=admins&allowed_emails=", "access.empty_rule"),
        ("rd=%2F&other=1", None),
        # A rule the relay cannot read refuses: a misspelling, or "=" escaped by a proxy.
        ("allowed_group=admins", "access.unknown_rule"),
        ("allowed_groups%3Dadmins", "access.unknown_rule"),
        ("Allowed_Groups=admins", "access.unknown_rule"),
        # Named like a rule once spaces, controls, punctuation, case and width are set aside:
        # refused, never ignored (which would let everyone through).
        ("%20allowed_groups=auditors", "access.unknown_rule"),
        ("+allowed_groups=auditors", "access.unknown_rule"),
        ("%09allowed_groups=auditors", "access.unknown_rule"),
        ("%00allowed_groups=auditors", "access.unknown_rule"),
        ("allowed_groups%20=auditors", "access.unknown_rule"),
        ("allowed_groups[]=auditors", "access.unknown_rule"),
        ("ALLOWED_GROUPS=auditors", "access.unknown_rule"),
        ("allowed-groups=auditors", "access.unknown_rule"),
        ("%EF%BD%81llowed_groups=auditors", "access.unknown_rule"),  # a full-width "a"
        ("x.allowed_groups=auditors", "access.unknown_rule"),
        ("%20allowed_emails=bob@example.com", "access.unknown_rule"),
    ],
)
def test_query_narrowing(query: str, expected: str | None) -> None:
    """/auth's allowed_groups, allowed_emails and allowed_email_domains narrow the config's
    rules for one app (comma-separated); other parameters are not ours."""
    assert judge(ALICE, query=query, email_domains=["*"]) == expected


def test_narrowing_never_widens() -> None:
    """A query or host rule that Alice passes does not let her past a config rule she fails."""
    rules = {
        "email_domains": ["example.org"],
        "hosts": {"wiki.example.com": {"allowed_email_domains": ["example.com"]}},
    }
    assert judge(ALICE, "wiki.example.com", "allowed_email_domains=example.com", **rules) == (
        "access.email_not_allowed"
    )


def test_host_rules() -> None:
    """Rules keyed by the forwarded host apply on top of the config's, to that host alone
    (its name is matched without case, with or without the port)."""
    rules = {
        "email_domains": ["*"],
        "hosts": {"Wiki.Example.com": {"allowed_groups": ["editors"]}},
    }
    assert judge(ALICE, "wiki.example.com", **rules) == "access.group_not_allowed"
    assert judge(ALICE, "WIKI.example.com:8443", **rules) == "access.group_not_allowed"
    # The DNS root's dot: nginx serves "wiki.example.com." as wiki.example.com.
    assert judge(ALICE, "wiki.example.com.", **rules) == "access.group_not_allowed"
    assert judge(ALICE, "wiki.example.com.:8443", **rules) == "access.group_not_allowed"
    assert judge(ALICE, "app.example.com", **rules) is None
    assert judge(ALICE, None, **rules) is None
    assert judge(ALICE | {"groups": ["editors"]}, "wiki.example.com", **rules) is None


def config_errors(
    access: dict[str, Any] | None, headers: dict[str, Any] | None = None
) -> list[str]:
    data: dict[str, Any] = {name: dict(body) for name, body in GOOD.items() if name != "access"}
    if access is not None:
        data["access"] = access
    if headers is not None:
        data["headers"] = headers
    try:
        config_from_mapping(data, {})
    except ConfigError as exc:
        return exc.lines
    return []


def test_no_rule_at_all_stops_startup_saying_what_to_set() -> None:
    """Fail closed: no [access] section, or one naming no rule, is one line saying to set
    email_domains = ["*"] to let everyone through."""
    for access in (None, {}, {"groups_claim": "roles", "hosts": {"a.example": {}}}):
        [line] = config_errors(access)
        assert line.startswith("access: no rule lets anyone in")
        assert 'email_domains = ["*"]' in line


@pytest.mark.parametrize(
    ("access", "headers", "key"),
    [
        ({"email_domains": ["example.com/"]}, None, "access.email_domains"),
        ({"email_domains": ["*"], "allowed_emails": ["nobody"]}, None, "access.allowed_emails"),
        ({"email_domains": ["*"], "groups_claim": "a..b"}, None, "access.groups_claim"),
        (
            {"email_domains": ["*"], "hosts": {"a.example": {"allowed_email_domains": ["@x"]}}},
            None,
            "access.hosts.a.example.allowed_email_domains",
        ),
        ({"email_domains": ["*"]}, {"extra": {"X Bad": "dept"}}, "headers.extra"),
        ({"email_domains": ["*"]}, {"extra": {"X-Auth-Request-Email": "mail"}}, "headers.extra"),
        ({"email_domains": ["*"]}, {"extra": {"Content-Length": "n"}}, "headers.extra"),
        ({"email_domains": ["*"]}, {"extra": {"Set-Cookie": "c"}}, "headers.extra"),
        ({"email_domains": ["*"]}, {"extra": {"Transfer-Encoding": "t"}}, "headers.extra"),
        ({"email_domains": ["*"]}, {"user_claim": ""}, "headers.user_claim"),
    ],
)
def test_bad_access_and_header_keys_are_named(
    access: dict[str, Any], headers: dict[str, Any] | None, key: str
) -> None:
    """A malformed rule or header mapping stops startup with one line naming its key."""
    [line] = config_errors(access, headers)
    assert line.startswith(f"{key}: "), line


def active_sessions(db: Engine) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(text("SELECT count(*) FROM sessions WHERE status = 'active'")).scalar_one()
        )


def test_a_login_the_rules_refuse_gets_a_403_page_and_no_session(
    make_relay: Any, provider: TestProvider, db: Engine, log_stream: Any
) -> None:
    """Signed in at the provider but outside the rules: a 403 page saying why, with a
    sign-out link (to try another account), no session row and no session cookie."""
    with make_relay(access={"email_domains": ["example.org"]}) as relay:
        done = sign_in(relay, provider)
        assert done.status_code == 403
        assert "Not allowed" in done.text
        assert "Your email address is not allowed here." in done.text
        assert f'href="{PUBLIC_URL}/logout"' in done.text
        assert "set-cookie" not in done.headers or "relay_session" not in done.headers["set-cookie"]
        assert active_sessions(db) == 0
        assert relay.get("/auth").status_code == 401
    events = [line for line in log_stream.getvalue().splitlines() if "login.forbidden" in line]
    assert len(events) == 1 and "access.email_not_allowed" in events[0]


def test_a_refused_login_asked_for_json_gets_json(make_relay: Any, provider: TestProvider) -> None:
    """A client that asks for JSON gets the reason as JSON."""
    with make_relay(access={"email_domains": ["*"], "allowed_groups": ["auditors"]}) as relay:
        start = relay.get("/login", params={"rd": "/"})
        done = relay.get(
            callback_path(provider_redirect(provider, start.headers["location"])),
            headers={"accept": "application/json"},
        )
    assert done.status_code == 403
    assert done.json()["error"] == "access.group_not_allowed"


def test_changed_rules_judge_existing_sessions_at_their_next_check(
    make_relay: Any, provider: TestProvider
) -> None:
    """A session signed in under one rule is refused (403, not 401) once the rules change,
    at its next /auth, cached or not; /userinfo refuses it too."""
    with make_relay(access={"email_domains": ["example.com"]}) as relay:
        sign_in(relay, provider)
        cookies = dict(relay.cookies)
        assert relay.get("/auth").status_code == 200
    with make_relay(access={"email_domains": ["example.org"]}) as relay:
        relay.cookies.update(cookies)
        for _ in range(3):  # a miss, then answers the cache could give
            refused = relay.get("/auth")
            assert refused.status_code == 403
            assert "www-authenticate" not in refused.headers
        assert relay.get("/auth/redirect").status_code == 403
        assert relay.get("/userinfo").status_code == 403
    with make_relay(access={"email_domains": ["example.org", "example.com"]}) as relay:
        relay.cookies.update(cookies)
        assert relay.get("/auth").status_code == 200


def test_auth_narrows_by_query_cached_or_not(make_relay: Any, provider: TestProvider) -> None:
    """/auth?allowed_groups=... answers per app, and the forward-auth shortcut's memo of
    verdicts never lets one app's answer stand for another's."""
    with make_relay() as relay:
        sign_in(relay, provider)
        for _ in range(3):
            assert relay.get("/auth?allowed_groups=admins").status_code == 200
            assert relay.get("/auth?allowed_groups=auditors").status_code == 403
            assert relay.get("/auth?allowed_groups=auditors,staff").status_code == 200
            assert relay.get("/auth?allowed_email_domains=example.org").status_code == 403
            assert relay.get("/auth").status_code == 200


def test_host_rules_need_a_trusted_proxy(make_relay: Any, provider: TestProvider) -> None:
    """Rules keyed by X-Forwarded-Host apply when a trusted proxy names the host; from any
    other peer the header is not believed."""
    access = {
        "email_domains": ["*"],
        "hosts": {"wiki.example.com": {"allowed_groups": ["editors"]}},
    }
    forwarded = {"x-forwarded-host": "wiki.example.com"}
    with make_relay(peer="127.0.0.1", access=access) as relay:
        sign_in(relay, provider)
        for _ in range(3):
            assert relay.get("/auth", headers=forwarded).status_code == 403
            assert (
                relay.get("/auth", headers={"x-forwarded-host": "app.example.com"}).status_code
                == 200
            )
            assert relay.get("/auth").status_code == 200
    with make_relay(peer="198.51.100.7", access=access) as relay:
        sign_in(relay, provider)
        assert relay.get("/auth", headers=forwarded).status_code == 200


UNREADABLE_HOSTS = [
    "wiki.example.com:1:2",  # nginx routes these as wiki.example.com
    "wiki.example.com:x:y",
    "wiki.example.com:443:",
    "[wiki.example.com]",  # Caddy routes this as wiki.example.com
    "wiki.example.com, app.example.com",
    "app.example.com, wiki.example.com",
    "",
]


@pytest.mark.parametrize("spelling", UNREADABLE_HOSTS)
def test_an_unreadable_forwarded_host_refuses_while_host_rules_exist(
    make_relay: Any, provider: TestProvider, spelling: str
) -> None:
    """A forwarded host the relay cannot read as one plain name[:port] is refused (403,
    access.unreadable_host) when [access] hosts has rules: the proxy may have routed it to a
    host with rules. On the routed path (cache flushed) and from the cache alike."""
    access = {
        "email_domains": ["*"],
        "hosts": {"wiki.example.com": {"allowed_groups": ["editors"]}},
    }
    with make_relay(peer="127.0.0.1", access=access) as relay:
        sign_in(relay, provider)
        cache = relay.app.state.relay.sessions.cache
        headers = {"x-forwarded-host": spelling, "accept": "application/json"}
        cache.flush()
        routed = relay.get("/auth", headers=headers)
        assert (routed.status_code, routed.json()["error"]) == (403, "access.unreadable_host")
        assert relay.get("/auth", headers=headers).status_code == 403  # now from the cache
        # A plain spelling of another host passes, and of the ruled one is ruled.
        assert relay.get("/auth", headers={"x-forwarded-host": "app.example.com"}).is_success
        ruled = relay.get("/auth", headers={"x-forwarded-host": "WIKI.example.com.:443"})
        assert ruled.status_code == 403


@pytest.mark.parametrize("spelling", UNREADABLE_HOSTS)
def test_without_host_rules_an_odd_host_changes_nothing(
    make_relay: Any, provider: TestProvider, spelling: str
) -> None:
    """No [access] hosts: the forwarded host decides nothing, so an odd one is not refused."""
    with make_relay(peer="127.0.0.1") as relay:
        sign_in(relay, provider)
        for _ in range(2):
            assert relay.get("/auth", headers={"x-forwarded-host": spelling}).status_code == 200


def test_host_rule_keys_must_read_as_hosts() -> None:
    """A key of [access] hosts that is not a plain host[:port] stops startup, naming it."""
    for key in ("wiki.example.com:1:2", "[wiki.example.com]", "wiki.example.com/x", "a b"):
        [line] = config_errors({"email_domains": ["*"], "hosts": {key: {}}})
        assert "access.hosts" in line
        assert repr(key) in line


def test_two_forwarded_host_lines_refuse_cached_or_not(
    make_relay: Any, provider: TestProvider
) -> None:
    """With two X-Forwarded-Host lines (a client's and a proxy's, in either order) no host
    is assumed, for the routed endpoint and the forward-auth shortcut alike."""
    access = {
        "email_domains": ["*"],
        "hosts": {"wiki.example.com": {"allowed_groups": ["editors"]}},
    }
    lines = [("x-forwarded-host", "app.example.com"), ("x-forwarded-host", "wiki.example.com")]
    with make_relay(peer="127.0.0.1", access=access) as relay:
        sign_in(relay, provider)
        cache = relay.app.state.relay.sessions.cache
        for order in (lines, lines[::-1]):
            cache.flush()
            assert [relay.get("/auth", headers=order).status_code for _ in range(3)] == [403] * 3


def test_identity_headers_follow_the_config(make_relay: Any, provider: TestProvider) -> None:
    """Which claim feeds each header, extra headers from claims, the preferred username, and
    groups from groups_claim; a claim the user lacks gives an empty header, never none."""
    provider.profile["realm_access"] = {"roles": ["editor", "viewer"]}
    provider.profile["department"] = "R&D"
    headers = {
        "user_claim": "name",
        "extra": {"X-Auth-Request-Department": "department", "X-Auth-Request-Team": "team"},
    }
    access = {"email_domains": ["*"], "groups_claim": "realm_access.roles"}
    with make_relay(access=access, headers=headers) as relay:
        sign_in(relay, provider)
        for _ in range(2):  # routed, then the shortcut
            got = relay.get("/auth").headers
            assert got["x-auth-request-user"] == "Alice Example"
            assert got["x-auth-request-preferred-username"] == "alice"
            assert got["x-auth-request-email"] == "alice@example.com"
            assert got["x-auth-request-groups"] == "editor,viewer"
            assert got["x-auth-request-department"] == "R&D"
            assert got["x-auth-request-team"] == ""


def test_the_access_token_reaches_the_app_only_when_asked(
    make_relay: Any, provider: TestProvider, clock: Any
) -> None:
    """Off by default; with pass_access_token the current access token (refreshed when it
    expires) is X-Auth-Request-Access-Token, and with set_authorization_header a Bearer
    Authorization header, on the routed path and from the shortcut alike."""
    with make_relay() as relay:
        sign_in(relay, provider)
        for _ in range(2):
            got = relay.get("/auth").headers
            assert "x-auth-request-access-token" not in got
            assert "authorization" not in got
    headers = {"pass_access_token": True, "set_authorization_header": True}
    with make_relay(headers=headers) as relay:
        sign_in(relay, provider)
        issued = list(provider.access_tokens)
        for _ in range(2):
            got = relay.get("/auth").headers
            assert got["x-auth-request-access-token"] == issued[-1]
            assert got["authorization"] == "Bearer " + issued[-1]
        clock.advance(3600)  # the access token expires: the check refreshes it
        for _ in range(2):
            got = relay.get("/auth").headers
            assert len(provider.access_tokens) == len(issued) + 1
            fresh = list(provider.access_tokens)[-1]
            assert got["x-auth-request-access-token"] == fresh != issued[-1]
            assert got["authorization"] == "Bearer " + fresh


def test_refreshed_claims_are_judged_by_the_rules(
    make_relay: Any, provider: TestProvider, clock: Any
) -> None:
    """Claims that change at a refresh are judged like any others: a user taken out of the
    allowed group at the provider is refused (403) once the session refreshes."""
    with make_relay(access={"email_domains": ["*"], "allowed_groups": ["admins"]}) as relay:
        sign_in(relay, provider)
        assert relay.get("/auth").status_code == 200
        provider.profile["groups"] = ["staff"]
        assert relay.get("/auth").status_code == 200  # nothing refreshed yet
        clock.advance(3600)
        assert relay.get("/auth").status_code == 403
        assert relay.get("/auth").status_code == 403


def without(name: str) -> dict[str, Any]:
    return {k: v for k, v in ALICE.items() if k != name}


@pytest.mark.parametrize(
    ("verified", "expected"),
    [
        (True, None),
        # The spelling of the providers that send a string (Cognito's userinfo).
        ("true", None),
        (False, "access.email_unverified"),
        ("false", "access.email_unverified"),
        ("FALSE", "access.email_unverified"),
        ("TRUE", "access.email_unverified"),
        (0, "access.email_unverified"),
        (1, "access.email_unverified"),
        ("yes", "access.email_unverified"),
        (None, "access.email_unverified"),
        ([True], "access.email_unverified"),
    ],
)
def test_only_true_counts_as_verified(verified: Any, expected: str | None) -> None:
    """OIDC Core 5.1: an address is verified when the provider says email_verified true;
    any other value is not a yes, and an email rule refuses it."""
    claims = ALICE | {"email_verified": verified}
    assert judge(claims, email_domains=["example.com"]) == expected
    assert judge(claims, allowed_emails=["alice@example.com"]) == expected


def test_an_address_the_provider_says_nothing_about_is_unverified() -> None:
    """No email_verified claim at all (Entra ID sends none) is not a verified address: email
    rules refuse it unless allow_unverified_email; rules on anything else do not mind."""
    claims = without("email_verified")
    assert judge(claims, email_domains=["example.com"]) == "access.email_unverified"
    assert judge(claims, email_domains=["example.com"], allow_unverified_email=True) is None
    assert judge(claims, email_domains=["*"]) is None
    assert judge(claims, allowed_groups=["admins"]) is None


def test_a_login_without_email_verified_meets_email_rules_as_unverified(
    make_relay: Any, provider: TestProvider
) -> None:
    """At login, a provider that sends no email_verified gets the 403 of an unverified
    address from an email rule, and passes with allow_unverified_email."""
    del provider.profile["email_verified"]
    with make_relay(access={"email_domains": ["example.com"]}) as relay:
        done = sign_in(relay, provider)
        assert done.status_code == 403
        assert "not verified" in done.text
    access = {"email_domains": ["example.com"], "allow_unverified_email": True}
    with make_relay(access=access) as relay:
        assert sign_in(relay, provider).status_code in (302, 303)
        assert relay.get("/auth").status_code == 200


# Values that an HTTP header cannot carry as they are, or that reach the app as another value
# (field values lose their edge spaces; control characters used to be stripped).
INEXACT = ["ali\tce", "ali\x00ce", "ali\r\nce", " alice ", "alice ", "ali\x85ce", "alice\u00a0"]


@pytest.mark.parametrize("value", INEXACT)
def test_claims_that_would_reach_the_app_as_another_value_are_refused(value: str) -> None:
    """sub, the email and every group are judged exactly as the app would receive them: a
    value with a control character or a space at either end is refused outright."""
    rules = {"email_domains": ["*"]}
    assert judge(ALICE | {"sub": value}, **rules) == "access.ambiguous_claim"
    email = value.replace("ce", "ce@example.com")
    assert judge(ALICE | {"email": email}, **rules) == "access.ambiguous_claim"
    assert judge(ALICE | {"groups": ["staff", value]}, **rules) == "access.ambiguous_claim"
    assert judge(ALICE | {"groups": value}, **rules) == "access.ambiguous_claim"
    # A claim neither the rules nor the headers read is none of the relay's business.
    assert judge(ALICE | {"nickname": value}, **rules) is None


@pytest.mark.parametrize(
    "change",
    [
        {"preferred_username": "ali\tce"},
        {"preferred_username": "ali\x00ce"},
        {"preferred_username": "ali\r\nce"},
        {"preferred_username": " alice "},
        {"email": "alice@example.com "},
        {"groups": ["staff", "admins\x7f"]},
        {"department": "R&D\n"},
    ],
)
def test_a_login_with_an_ambiguous_identity_gets_a_403_naming_the_claim(
    make_relay: Any, provider: TestProvider, db: Engine, log_stream: Any, change: dict[str, Any]
) -> None:
    """A login whose identity would reach the app as another value ("ali\\tce" as "alice")
    is refused: a 403 page saying why, no session, and a login.forbidden line naming the
    claim but not its value."""
    [claim] = change
    provider.profile.update(change)
    headers = {"extra": {"X-Auth-Request-Department": "department"}}
    with make_relay(headers=headers) as relay:
        done = sign_in(relay, provider)
        assert done.status_code == 403
        assert "cannot be passed on exactly" in done.text
        assert active_sessions(db) == 0
        assert relay.get("/auth").status_code == 401
    [event] = [line for line in log_lines(log_stream) if line["event"] == "login.forbidden"]
    assert event["reason"] == "access.ambiguous_claim"
    assert event["detail"].startswith(claim + ": ")
    assert "ali" not in event["detail"] and "R&D" not in event["detail"]


def test_a_stored_session_whose_identity_turns_ambiguous_is_refused_at_auth(
    make_relay: Any, provider: TestProvider, clock: Any
) -> None:
    """A session stored before its claims were judged this way (here: a header added since
    shows a claim with a tab in it), or whose refreshed claims bring one, gets 403 at
    /auth, routed and from the shortcut alike."""
    provider.profile["name"] = "Alice\tExample"
    with make_relay() as relay:
        sign_in(relay, provider)
        assert relay.get("/auth").status_code == 200  # name is in no header, judged by no rule
        cookies = dict(relay.cookies)
    with make_relay(headers={"user_claim": "name"}) as relay:
        relay.cookies.update(cookies)
        assert [relay.get("/auth").status_code for _ in range(3)] == [403] * 3
    provider.profile["name"] = "Alice Example"
    with make_relay() as relay:
        sign_in(relay, provider)
        assert relay.get("/auth").status_code == 200
        provider.profile["preferred_username"] = "alice\x00"
        clock.advance(3600)  # the access token expires: the check refreshes the claims
        refused = relay.get("/auth", headers={"accept": "application/json"})
        assert (refused.status_code, refused.json()["error"]) == (403, "access.ambiguous_claim")
        assert relay.get("/auth").status_code == 403


def test_a_header_carries_the_claim_exactly_or_not_at_all() -> None:
    """Rendered headers are the claims' text exactly; a value that could not arrive as it is
    (which the rules refuse anyway) is sent empty, never stripped into another value."""
    config = config_from_mapping(GOOD | {"access": {"email_domains": ["*"]}}, {})
    headers = IdentityHeaders(config.headers, Access(config.access))
    claims = {"sub": "u1", "preferred_username": "ali\tce", "email": " alice@example.com"}
    session = ActiveSession("h", "u1", claims | {"groups": ["staff"]}, 0, 0, 1)
    rendered = dict(headers.render(session))
    assert rendered[b"x-auth-request-user"] == b""
    assert rendered[b"x-auth-request-email"] == b""
    assert rendered[b"x-auth-request-preferred-username"] == b""
    assert rendered[b"x-auth-request-subject"] == b"u1"
    exact = ActiveSession("h", "u1", {"sub": "u1", "preferred_username": "Ålice Ex"}, 0, 0, 1)
    assert dict(headers.render(exact))[b"x-auth-request-user"] == "Ålice Ex".encode()


def test_a_group_with_a_comma_is_no_group_for_the_rules_or_the_app(
    make_relay: Any, provider: TestProvider
) -> None:
    """X-Auth-Request-Groups is comma-separated, so a group named "x,admins" would reach
    the app as "x" and "admins": it is left out, of the header and of the rules alike."""
    provider.profile["groups"] = ["x,admins", "staff"]
    # A rule naming such a group could never pass: it stops startup instead.
    [line] = config_errors({"email_domains": ["*"], "allowed_groups": ["x,admins"]})
    assert line.startswith("access.allowed_groups: "), line
    hosts = {"a.example": {"allowed_groups": [" admins"]}}
    [line] = config_errors({"email_domains": ["*"], "hosts": hosts})
    assert line.startswith("access.hosts.a.example.allowed_groups: "), line
    with make_relay() as relay:
        sign_in(relay, provider)
        for _ in range(2):  # routed, then the shortcut
            assert relay.get("/auth").headers["x-auth-request-groups"] == "staff"
            assert relay.get("/auth?allowed_groups=admins").status_code == 403
            assert relay.get("/auth?allowed_groups=staff").status_code == 200
