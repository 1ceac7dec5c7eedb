"""A flood of /login: every attempt would write a pending row, so the table must stay bounded
while real users keep getting through."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from tests.conftest import sign_in
from tests.provider import TestProvider


def pending_rows(db: Engine) -> int:
    with db.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM sessions WHERE status = 'pending'"))
        return int(count.scalar_one())


def test_thousands_of_logins_from_one_client_stay_bounded(
    make_relay: Any, provider: TestProvider, db: Engine
) -> None:
    """3000 cookie-less /login requests from one address (behind the trusted proxy) leave at
    most login_rate pending rows; users at other addresses still sign in."""
    with make_relay(peer="127.0.0.1", limits={"login_rate": "30/minute"}) as relay:
        statuses: dict[int, int] = {}
        for _ in range(3000):
            relay.cookies.clear()  # a flooder throws its cookies away
            status = relay.get("/login", headers={"X-Forwarded-For": "203.0.113.66"}).status_code
            statuses[status] = statuses.get(status, 0) + 1
        assert statuses == {302: 30, 429: 2970}
        assert pending_rows(db) == 30

        for user in ("198.51.100.1", "198.51.100.2"):
            relay.cookies.clear()
            relay.headers["X-Forwarded-For"] = user
            done = sign_in(relay, provider)
            assert done.status_code == 302
            assert relay.get("/auth").status_code == 200


def test_forwarded_for_from_untrusted_peer_does_not_dodge_the_limit(
    make_relay: Any, db: Engine
) -> None:
    """A client that is not a trusted proxy cannot pose as many addresses with X-Forwarded-For."""
    with make_relay(limits={"login_rate": "5/minute"}) as relay:
        statuses = []
        for i in range(20):
            relay.cookies.clear()
            response = relay.get("/login", headers={"X-Forwarded-For": f"192.0.2.{i}"})
            statuses.append(response.status_code)
    assert statuses.count(302) == 5
    assert pending_rows(db) == 5


def test_global_pending_cap(make_relay: Any, db: Engine) -> None:
    """Past max_pending live pending logins, /login answers 503 to everyone until some expire."""
    with make_relay(peer="127.0.0.1", limits={"max_pending": 5}) as relay:
        for i in range(5):
            relay.cookies.clear()
            assert (
                relay.get("/login", headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code == 302
            )
        relay.cookies.clear()
        refused = relay.get(
            "/login", headers={"X-Forwarded-For": "192.0.2.99", "Accept": "application/json"}
        )
        assert refused.status_code == 503
        assert refused.json()["error"] == "login.pending_cap"
    assert pending_rows(db) == 5


def test_pending_cap_frees_up_as_logins_expire(make_relay: Any, clock: Any) -> None:
    """Expired pending rows do not count against the cap, pruned or not."""
    with make_relay(peer="127.0.0.1", limits={"max_pending": 2}) as relay:
        for i in range(2):
            relay.cookies.clear()
            relay.get("/login", headers={"X-Forwarded-For": f"192.0.2.{i}"})
        relay.cookies.clear()
        assert relay.get("/login", headers={"X-Forwarded-For": "192.0.2.9"}).status_code == 503
        clock.advance(601)  # pending_lifetime 10m
        assert relay.get("/login", headers={"X-Forwarded-For": "192.0.2.9"}).status_code == 302
