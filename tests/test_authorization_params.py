"""Authorization request parameters a provider's config adds to every login (OIDC Core 3.1.2.1:
prompt, max_age, acr_values, extra parameters; login_hint from /login), and the ID-token rule
max_age brings with it (3.1.3.7 (13))."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from relay.config import ConfigError
from tests.conftest import FakeClock, base_config, callback_path, provider_redirect, query
from tests.provider import TestProvider

Start = Callable[..., Any]


def authorize_params(client: Any, path: str = "/login?rd=/") -> dict[str, str]:
    response = client.get(path)
    assert response.status_code == 302, response.text
    return query(response.headers["location"])


def test_the_configured_parameters_go_to_the_provider(
    make_relay: Start, provider: TestProvider
) -> None:
    """prompt, max_age, acr_values (space-separated) and the extra parameters, beside the
    relay's own."""
    settings = {
        "prompt": "login consent",
        "max_age": "1h",
        "acr_values": ["urn:mfa", "urn:pwd"],
        "extra_params": {"hd": "example.com", "ui_locales": "de"},
    }
    with make_relay(provider=settings) as client:
        params = authorize_params(client)
    assert params["prompt"] == "login consent"
    assert params["max_age"] == "3600"
    assert params["acr_values"] == "urn:mfa urn:pwd"
    assert params["hd"] == "example.com" and params["ui_locales"] == "de"
    assert params["code_challenge_method"] == "S256"


def test_none_of_them_is_sent_unless_configured(relay: Any) -> None:
    """The default request carries only what the relay needs."""
    params = authorize_params(relay)
    assert not {"prompt", "max_age", "acr_values", "login_hint"} & set(params)


def test_login_hint_is_passed_through_when_it_is_plain_text(relay: Any) -> None:
    """/login?login_hint=: the provider gets it; one with a control character is dropped."""
    params = authorize_params(relay, "/login?rd=/&login_hint=alice@example.com")
    assert params["login_hint"] == "alice@example.com"
    params = authorize_params(relay, "/login?rd=/&login_hint=alice%0d%0aX-Evil:%201")
    assert "login_hint" not in params
    params = authorize_params(relay, "/login?rd=/&login_hint=" + "a" * 300)
    assert "login_hint" not in params


def sign_in_with(client: Any, provider: TestProvider) -> Any:
    start = client.get("/login", params={"rd": "/"})
    return client.get(callback_path(provider_redirect(provider, start.headers["location"])))


def test_with_max_age_an_id_token_without_auth_time_is_refused(
    make_relay: Start, provider: TestProvider
) -> None:
    """3.1.2.1: with max_age asked, auth_time is REQUIRED in the ID token."""
    with make_relay(provider={"max_age": "1h"}) as client:
        response = sign_in_with(client, provider)
    assert response.status_code == 400
    assert "__Host-relay_session" not in response.cookies


def test_with_max_age_an_authentication_too_long_ago_is_refused(
    make_relay: Start, provider: TestProvider, clock: FakeClock
) -> None:
    """3.1.3.7 (13): auth_time older than max_age (plus the skew) is refused; a recent one
    passes."""
    with make_relay(provider={"max_age": "1h"}) as client:
        provider.behaviour.id_token_claims["auth_time"] = int(clock()) - 3600 - 61
        assert sign_in_with(client, provider).status_code == 400
        provider.behaviour.id_token_claims["auth_time"] = int(clock()) - 600
        assert sign_in_with(client, provider).status_code == 302


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"prompt": "none login"}, "provider.prompt"),
        ({"prompt": "sometimes"}, "provider.prompt"),
        ({"extra_params": {"state": "x"}}, "provider.extra_params"),
        ({"extra_params": {"redirect_uri": "https://evil.test/"}}, "provider.extra_params"),
    ],
)
def test_a_bad_parameter_stops_startup_naming_its_key(
    database_url: str, settings: dict[str, Any], key: str
) -> None:
    """One line naming the key: prompt's values, and no extra parameter the relay sets."""
    with pytest.raises(ConfigError) as caught:
        base_config(database_url, provider=settings)
    assert caught.value.lines[0].startswith(key + ": ")
