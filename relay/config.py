"""The relay's configuration: one typed section per TOML table.

A config is read from one TOML file; any key can be overridden by an environment variable
``RELAY_<SECTION>__<KEY>`` (case-insensitive; lists as JSON). Everything is validated in one
pass, so an operator sees every mistake at once, one line per key.

Longer than the house's ~300 lines on purpose: it is the configuration reference, one class
per TOML table with each key's default, bounds and a comment on what it does, and the
cross-section checks that need them all; split across modules it would be read in pieces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

from limits import parse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url

from relay.exact import flaw
from relay.hosts import parse_host
from relay.oidc.keys import algorithm, load_key

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_ENV_PREFIX = "RELAY_"
# Required sections validated as empty when absent, so the line says what to set in them.
_JUDGED_WHEN_ABSENT = {"access"}
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


class ConfigError(Exception):
    """The configuration is unusable; ``lines`` holds one message per bad key."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _parse_duration(value: object) -> object:
    """Accept "90s", "15m", "8h", "7d" or whole seconds; return seconds."""
    if isinstance(value, bool):
        return value  # let the int validator reject it
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError('must be a duration like "90s", "15m", "8h", "7d" or whole seconds')
        return int(match.group(1)) * _UNITS[match.group(2)]
    return value


Duration = Annotated[int, BeforeValidator(_parse_duration), Field(ge=1)]


def is_loopback_host(host: str | None) -> bool:
    return host is not None and host.lower() in _LOOPBACK_HOSTS


# Values an example or a tutorial puts where a secret goes.
_PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "replace_me", "your-secret")
_GENERATE = "python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"


def _not_a_placeholder(secret: SecretStr, fix: str) -> SecretStr:
    value = secret.get_secret_value()
    if not value.strip():
        raise ValueError(f"must not be empty: {fix}")
    if any(marker in value.lower() for marker in _PLACEHOLDERS):
        raise ValueError(f"is still the example's placeholder: {fix}")
    return secret


def _https_unless_loopback(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        raise ValueError("must use https (plain http is allowed only on localhost)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return url.rstrip("/")


def _asymmetric(value: list[str]) -> list[str]:
    bad = [alg for alg in value if alg.lower() == "none" or alg.upper().startswith("HS")]
    if bad:
        raise ValueError(f"{bad} not allowed: only asymmetric signatures are accepted")
    if not value:
        raise ValueError("must name at least one algorithm")
    return value


class _Section(BaseModel):
    # Each key's docstring is its line in docs/configuration.md (scripts/config-reference).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    """where uvicorn listens"""
    port: int = Field(default=4180, ge=1, le=65535)
    """where uvicorn listens"""
    public_url: str
    """the relay's URL as browsers see it; https except on localhost"""
    # Peers whose X-Forwarded-* headers are believed (addresses or CIDR ranges).
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    """peers whose `X-Forwarded-*` are believed"""
    # Client addresses that may read /metrics (through a trusted proxy: the forwarded client).
    metrics_allowed: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    """client addresses that may read `/metrics` (404 for others)"""
    # A second port (on the same host) serving only /healthz, /readyz and /metrics, to anyone
    # who reaches it; /metrics then leaves the public port.
    internal_port: int | None = Field(default=None, ge=1, le=65535)
    """a second port serving only `/healthz`, `/readyz`, `/metrics` (same paths); `/metrics`
    then leaves the public port"""
    # Let several `relay serve` processes share the port (SO_REUSEPORT): one per core.
    reuse_port: bool = False
    """`SO_REUSEPORT`: several `relay serve` processes on one host share the port, one per core"""
    # After SIGTERM: /readyz says 503 and requests are still served for shutdown_delay (so a
    # load balancer can take the replica out), then requests in flight get shutdown_timeout.
    shutdown_delay: Annotated[int, BeforeValidator(_parse_duration), Field(ge=0)] = 0
    """after SIGTERM, keep serving this long with `/readyz` at 503 so the load balancer takes
    the replica out (set ≥ its probe period, e.g. `5s` on Kubernetes)"""
    shutdown_timeout: Duration = 10
    """then, how long requests in flight may take to finish"""
    # A request head (request line and headers) larger than this gets 431; one not complete
    # within header_timeout of the connection (or of its first byte) gets 408. A proxy in
    # front sends heads whole and far smaller; these bound a client that reaches the relay
    # directly (relay/protocol.py).
    max_header_bytes: int = Field(default=64 * 1024, ge=8 * 1024, le=16 * 1024 * 1024)
    """a request head (request line and headers) larger than this gets 431 and the connection
    closed; 8 KiB to 16 MiB"""
    header_timeout: Duration = 10
    """a request head not complete this long after the connection opened (or, kept alive, after
    the request's first byte) gets 408 and the connection closed"""

    _check_public_url = field_validator("public_url")(_https_unless_loopback)

    @field_validator("trusted_proxies", "metrics_allowed")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or CIDR range") from exc
        return value

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerConfig:
        if self.internal_port is not None and self.internal_port == self.port:
            raise ValueError("internal_port: must differ from server.port")
        return self

    @property
    def path_prefix(self) -> str:
        """The path under which the relay's routes live ("" at the root)."""
        return urlsplit(self.public_url).path.rstrip("/")

    @property
    def origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def redirect_uri(self) -> str:
        return self.public_url + "/callback"


_PROMPTS = frozenset({"none", "login", "consent", "select_account", "create"})
# What the relay's own authorization request sets (or must never carry from a config).
_RELAY_PARAMS = frozenset(
    {
        "response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
        "code_challenge", "code_challenge_method", "request", "request_uri", "response_mode",
        "prompt", "max_age", "acr_values", "login_hint",
    }
)  # fmt: skip


TENANT = "{tenantid}"  # the placeholder of a per-tenant issuer (Entra ID's common endpoints)
_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"
_MULTI_TENANT = re.compile(r"/(common|organizations)(/|$)")


def tenant_template(issuer: str) -> str | None:
    """Entra ID's multi-tenant endpoint's issuer with {tenantid} where the tenant goes, as its
    discovery document says it: .../organizations/v2.0 -> .../{tenantid}/v2.0."""
    if not _MULTI_TENANT.search(issuer):
        return None
    return _MULTI_TENANT.sub(lambda m: "/" + TENANT + m.group(2), issuer, count=1)


class ProviderConfig(_Section):
    """The identity provider. Several: one `[[providers]]` table each, with these keys and
    `name`, `label`, `hosts` (see [Several providers](providers.md#several-providers))."""

    name: str = Field(default="default", pattern=_NAME)
    """how `/login?provider=`, the chooser page and the logs name it (`[[providers]]`)"""
    label: str | None = None
    """the chooser's text for it; unset: the name"""
    hosts: list[str] = Field(default_factory=list)
    """hosts (`app.example.com`, `app.example.com:8443`) whose logins go to this provider:
    the host of the page the person is going to, else the forwarded host"""
    issuer: str
    """exact issuer; https except on localhost. Entra ID's multi-tenant endpoints
    (`.../organizations/v2.0`, `.../common/v2.0`): with `tenants`"""
    tenants: list[str] = Field(default_factory=list)
    """with an issuer whose path has `common` or `organizations` (Entra ID): the tenants whose
    people may sign in; the ID token's `tid` must be one, and its `iss` that tenant's"""
    client_id: str = Field(min_length=1)
    """the client id the provider issued to the relay"""
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])
    """must include `openid`"""
    token_endpoint_auth_method: Literal[
        "client_secret_basic", "client_secret_post", "private_key_jwt", "none"
    ] = "client_secret_basic"
    """or `client_secret_post`, `private_key_jwt` (RFC 7523: no shared secret, see
    `private_key_file`), `none`"""
    client_secret: SecretStr | None = Field(default=None, validate_default=True)
    """the client secret the provider issued; required with `client_secret_basic` and
    `client_secret_post`. Better in the environment: `RELAY_PROVIDER__CLIENT_SECRET`"""
    private_key_file: str | None = Field(default=None, validate_default=True)
    """with `private_key_jwt`: the PEM file of the relay's private key (RSA, EC or Ed25519),
    read again when it changes; its public key is served at `<public_url>/jwks.json`, the
    `jwks_uri` to register for the client"""
    private_key_id: str | None = None
    """the key's `kid`; unset: its RFC 7638 thumbprint"""
    published_key_files: list[str] = Field(default_factory=list)
    """more PEM keys (private or public) served at `<public_url>/jwks.json` but not signed
    with: the next key, published before the switch (providers cache a client's key set: the
    npm oidc-provider for 60 s), or the previous one, while replicas switch"""
    pushed_authorization: Literal["auto", "always", "never"] = "auto"
    """Pushed Authorization Requests (RFC 9126): `auto` where the provider advertises them,
    `always` (refuse to log in without), `never`"""
    # Signing algorithms accepted for ID tokens; the provider's advertised list is intersected.
    allowed_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"]
    )
    """ID-token algorithms, intersected with the provider's; never `none` or `HS*`"""
    # Audiences besides client_id that an ID token may also name (OIDC Core 3.1.3.7 (3)).
    trusted_audiences: list[str] = Field(default_factory=list)
    """audiences an ID token may name besides `client_id`"""
    # RFC 9207: when the provider advertises authorization_response_iss_parameter_supported,
    # refuse authorization responses that lack the iss parameter.
    require_iss_parameter: bool = True
    """refuse responses without `iss` when the provider advertises it (RFC 9207)"""
    # Fetch the provider's userinfo after login (when it has one) for claims the ID token
    # lacks; its sub must equal the ID token's (OIDC Core 5.3.2).
    fetch_userinfo: bool = True
    """merge the provider's userinfo claims after login; its `sub` must match"""
    clock_skew: Duration = 60
    """tolerance on `exp`, `iat`, `nbf`"""
    timeout: Duration = 10
    """per request to the provider"""
    metadata_ttl: Duration = 3600
    """discovery cache lifetime"""
    jwks_refresh_cooldown: Duration = 60
    """at most one JWKS refetch per period on an unknown `kid`"""
    post_logout_redirect_url: str | None = None
    """where the provider sends the browser after logout; unset: back to the relay's own
    `<public_url>/` (register that URI), which says "You are signed out\""""
    # Authorization request parameters (OIDC Core 3.1.2.1), sent with every login.
    prompt: str | None = None
    """`prompt` for every login: `login`, `consent`, `select_account`, `create`, or several
    space-separated; `none` alone"""
    max_age: Annotated[int, BeforeValidator(_parse_duration), Field(ge=0)] | None = None
    """`max_age`: the provider re-authenticates a person who signed in there longer ago; the
    ID token must then carry `auth_time`, and one older than this (plus `clock_skew`) is
    refused (OIDC Core 3.1.3.7 (13))"""
    acr_values: list[str] = Field(default_factory=list)
    """`acr_values` asked for (voluntary: the provider may authenticate otherwise)"""
    extra_params: dict[str, str] = Field(default_factory=dict)
    """more authorization request parameters, as the provider documents them
    (`{ hd = "example.com" }`); none the relay sets itself"""
    revoke_refresh_tokens: bool = True
    """when a session ends (a sign-out, "sign out everywhere else", an operator's revocation),
    revoke its refresh token at the provider's revocation endpoint (RFC 7009), if it has one"""
    # Back-channel logout tokens issued longer ago than this (plus clock_skew) are refused;
    # each accepted token's jti is remembered for as long, so a replay is refused too.
    logout_token_max_age: Duration = 300
    """back-channel logout tokens with an older `iat` (beyond `clock_skew`) are refused; each
    accepted `jti` is remembered this long, so a replay is refused"""

    @field_validator("issuer")
    @classmethod
    def _exact_issuer(cls, value: str) -> str:
        # Checked like the other URLs, but kept exactly as written: the issuer is compared
        # character for character with the provider's, and some (Authentik) end in "/".
        _https_unless_loopback(value)
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        bad = [host for host in value if parse_host(host) is None]
        if bad:
            raise ValueError(f"{bad} are not host names (name or name:port)")
        return [str(parse_host(host)) for host in value]

    @model_validator(mode="after")
    def _tenants(self) -> ProviderConfig:
        if self.tenants and tenant_template(self.issuer) is None:
            raise ValueError(
                "provider.tenants: only for an issuer whose path has common or organizations "
                "(https://login.microsoftonline.com/organizations/v2.0)"
            )
        return self

    @property
    def issuer_template(self) -> str | None:
        """The issuer of a per-tenant provider, with {tenantid} for the tenant; else None."""
        return tenant_template(self.issuer) if self.tenants else None

    @field_validator("published_key_files")
    @classmethod
    def _published_keys(cls, value: list[str]) -> list[str]:
        for path in value:
            try:
                with open(path, "rb") as handle:
                    algorithm(load_key(handle.read(), private=False))
            except OSError as exc:
                raise ValueError(f"{path} cannot be read: {exc.strerror}") from None
            except ValueError as exc:
                raise ValueError(f"{path} {exc}") from None
        return value

    @field_validator("private_key_file")
    @classmethod
    def _private_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        method = info.data.get("token_endpoint_auth_method")
        if method == "private_key_jwt" and value is None:
            raise ValueError('is required with token_endpoint_auth_method = "private_key_jwt"')
        if value is not None:
            try:
                with open(value, "rb") as handle:
                    algorithm(load_key(handle.read()))
            except OSError as exc:
                raise ValueError(f"cannot be read: {exc.strerror}") from None
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        if value is None:
            return None
        words = value.split()
        if not words or any(w not in _PROMPTS for w in words) or len(set(words)) != len(words):
            raise ValueError(f"must be space-separated values of {sorted(_PROMPTS)}")
        if "none" in words and len(words) > 1:
            raise ValueError('"none" cannot be combined with another value (OIDC Core 3.1.2.1)')
        return " ".join(words)

    @field_validator("extra_params")
    @classmethod
    def _extra_params(cls, value: dict[str, str]) -> dict[str, str]:
        taken = sorted(set(value) & _RELAY_PARAMS)
        if taken:
            raise ValueError(f"{taken} are set by the relay itself")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: list[str]) -> list[str]:
        if "openid" not in value:
            raise ValueError('must include "openid"')
        return value

    _check_algorithms = field_validator("allowed_algorithms")(_asymmetric)

    @field_validator("client_secret")
    @classmethod
    def _secret_for_confidential_clients(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        method = info.data.get("token_endpoint_auth_method")
        if method in ("client_secret_basic", "client_secret_post") and value is None:
            raise ValueError(f'is required with token_endpoint_auth_method = "{method}"')
        if value is not None:
            _not_a_placeholder(value, "set the secret your provider issued for client_id")
        return value


class DatabaseConfig(_Section):
    url: str = "sqlite+aiosqlite:///relay.db"
    """or `postgresql+psycopg://user:pw@host/db`"""
    # The longest any request waits on the database: for a pooled connection, a new
    # connection, a statement or a lock. Past it the request gets a 503.
    timeout: Duration = 2
    """the longest a request waits on the database (a pooled connection, a new connection, a
    statement, a lock); then 503"""
    # Connections kept open per relay process. With the session cache, most /auth requests
    # need none; logins and cache misses share these.
    pool_size: int = Field(default=10, ge=1, le=1000)
    """connections per relay process (PostgreSQL): up to `pool_size` for the uncached checks,
    and `pool_size` + `max_overflow` for the rest ([operations](operations.md), *The
    connection budget*)"""
    max_overflow: int = Field(default=0, ge=0, le=1000)
    """connections per relay process (PostgreSQL): up to `pool_size` for the uncached checks,
    and `pool_size` + `max_overflow` for the rest ([operations](operations.md), *The
    connection budget*)"""
    # `url` goes through a transaction pooler (PgBouncer): no startup options and no
    # server-side prepared statements, which such a pooler refuses or loses.
    pooled: bool = False
    """`url` goes through a transaction pooler (PgBouncer): no startup parameters, no
    server-side prepared statements; see *Behind a connection pooler*"""
    # A direct connection to PostgreSQL for the invalidation listener: LISTEN cannot work
    # through a transaction pooler. Default: `url`.
    listen_url: str | None = None
    """a direct connection to PostgreSQL for the invalidation listener (LISTEN cannot work
    through a transaction pooler)"""

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+psycopg://")):
            raise ValueError('must start with "sqlite+aiosqlite://" or "postgresql+psycopg://"')
        return value

    @field_validator("listen_url")
    @classmethod
    def _postgres(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("postgresql+psycopg://"):
            raise ValueError('must start with "postgresql+psycopg://"')
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def display_url(self) -> str:
        """The URL with its password masked, for messages and check-config."""
        return make_url(self.url).render_as_string(hide_password=True)


class SessionConfig(_Section):
    secret: SecretStr
    """derives the token-encryption keys"""
    # Older secrets, still accepted to decrypt tokens written before a rotation.
    previous_secrets: list[SecretStr] = Field(default_factory=list)
    """old secrets, still able to decrypt after a rotation"""
    cookie_name: str = Field(default="relay_session", pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    """`__Host-` prefixed when secure and no domain"""
    cookie_secure: bool = True
    """false only for http://localhost development; drops the `__Host-` prefix, with what
    `cookie_domain` gives up"""
    cookie_domain: str | None = None
    """share the cookie with subdomains. Gives up the `__Host-` prefix: any host under the
    domain (and any `http://` page on it) can then set cookies of the relay's names. The relay
    refuses a request carrying two of one name (`/auth` 401; `/login` and `/callback` a 400 page
    saying to clear the site's cookies) and mints a fresh login cookie on every `/login`, but a
    sibling host that plants its own login or session cookie in a browser that has none can
    still sign that browser in as the sibling's account: set it only when every host under the
    domain is yours"""
    absolute_lifetime: Duration = 7 * 86400
    """a session's hard limit"""
    idle_timeout: Duration = 86400
    """ends a session unused this long"""
    touch_interval: Duration = 60
    """last access is written at most this often"""
    pending_lifetime: Duration = 600
    """time allowed between /login and /callback"""
    prune_interval: Duration = 300
    """how often the pruner runs"""
    prune_batch_size: int = Field(default=500, ge=1, le=100_000)
    """rows per DELETE"""
    # No longer used: every /login mints a fresh login cookie, so a browser has one login in
    # flight. Still accepted, so that a config written for an older relay starts.
    max_pending_per_browser: int = Field(default=10, ge=1, le=1000)
    """no longer used (accepted so older configs start): each `/login` mints a fresh login
    cookie, so a browser has one login in flight"""
    # The browser's address as a session records it at sign-in, for its owner's sessions page
    # and operators: "truncated" (its /24 or /48: a person tells home from office from
    # abroad, and the table keeps no one's exact address), "full", or "none".
    record_address: Literal["truncated", "full", "none"] = "truncated"
    """the browser's address as a session records it at sign-in, for its owner's sessions page,
    the console and `relay sessions list`: `"truncated"` (/24 or /48: a person tells home from
    office from abroad, and the table keeps no one's exact address for a session's lifetime),
    `"full"`, `"none"`"""

    @field_validator("secret", "previous_secrets")
    @classmethod
    def _long_enough(cls, value: SecretStr | list[SecretStr]) -> SecretStr | list[SecretStr]:
        for secret in value if isinstance(value, list) else [value]:
            _not_a_placeholder(secret, f"generate one with {_GENERATE}")
            if len(secret.get_secret_value()) < 32:
                raise ValueError(f"must be at least 32 characters: generate one with {_GENERATE}")
        return value


class CacheConfig(_Section):
    # Live sessions kept in each relay process (least recently used go first); 0 turns the
    # cache off and every /auth reads the table. About 2.8 KB each with typical claims
    # (benchmarks/cache_bytes.py): the default holds 100,000 in about 270 MiB.
    max_entries: int = Field(default=100_000, ge=0, le=10_000_000)
    """live sessions cached per process, least recently used leave first; `0` = no cache. About
    2.8 KB each with typical claims: 100,000 take about 270 MiB ([how
    big](operations.md#how-big-the-cache-is))"""
    # How long a cookie that named no session is remembered as naming none (at most
    # max_entries of them), so that the same bogus cookie again costs no SELECT. A new
    # session is never refused by it (see relay/store/cache.py). 0 turns it off.
    miss_ttl: Annotated[int, BeforeValidator(_parse_duration), Field(ge=0, le=60)] = 5
    """a cookie naming no session is remembered as such this long (at most `cache.max_entries`
    of them), so repeating it costs no `SELECT`; never refuses a new session; `0` = off"""
    # PostgreSQL: while this replica cannot reach the database at all, the sessions its cache
    # held when it lost the database keep passing for at most this long from then (see
    # relay/store/outage.py); others get 503. A session ended elsewhere meanwhile passes
    # here for up to this long. 0, the default, keeps the 1-second bound: 503 at once.
    outage_grace: Annotated[int, BeforeValidator(_parse_duration), Field(ge=0, le=3600)] = 0
    """PostgreSQL: while a replica cannot connect to the database at all, the sessions it had
    cached keep passing this long, counted from its last confirmed heartbeat (at most `1h`);
    others get 503. A session revoked meanwhile by a replica that still reaches the database
    passes here for up to this long (see [database
    trouble](operations.md#sessions-on-the-hot-path-the-cache-replicas-and-database-trouble))"""


class RedirectsConfig(_Section):
    # Hosts rd may point to, besides the relay's own: "app.example.com", "app.example.com:8443",
    # "*.example.com" (subdomains only).
    allowed_hosts: list[str] = Field(default_factory=list)
    """hosts `rd` may point to: `host`, `host:port`, `*.domain`"""
    # Where to send a user whose rd is missing or not allowed; default: the relay's own page.
    default_url: str | None = None
    """where users go when `rd` is missing or refused"""

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str]) -> list[str]:
        pattern = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.\-]*[a-z0-9])?(:\d{1,5})?$")
        for entry in value:
            if not pattern.match(entry):
                raise ValueError(f"{entry!r} is not a host, host:port or *.domain (lowercase)")
        return [entry.lower() for entry in value]


class LimitsConfig(_Section):
    # /login attempts per client address (limits' notation: "600/10 minutes", "5/second"),
    # a sliding window. An office behind one NAT address signs in together on a Monday
    # morning; a flood from one address is refused after this many.
    login_rate: str = "600/10 minutes"
    """`/login` attempts per client address (an IPv6 /64: `ipv6_prefix`), a sliding window; more
    get 429 (counted per process unless `storage_uri` is shared)"""
    # Where the rate counters live: "memory://" (each process counts alone: with N replicas
    # a client gets N times the rate) or shared storage, "redis://host:6379/0".
    storage_uri: str = "memory://"
    """where the rate counters live: `memory://` (per process) or `redis://host:6379/0` (shared
    by replicas; needs the `redis` extra)"""
    # Live pending logins per client address, counted in the database (so across replicas).
    max_pending_per_address: int = Field(default=500, ge=1)
    """live pending logins per client address (an IPv6 /64), counted in the database (across
    replicas); more get 429"""
    # Pending logins in the table; past it the address holding the most loses its oldest.
    max_pending: int = Field(default=10_000, ge=1)
    """pending logins in the table; past it the address holding the most loses its oldest, and a
    newcomer whose own address holds the most (or as many as any) gets 429: a flood never drops
    a login in progress elsewhere"""
    # What "a client address" is for both limits above: the network of this many leading
    # bits. One IPv6 subscriber gets a /64 (or more) to pick addresses from, so a per-address
    # count on IPv6 would be one bucket per address they care to use.
    ipv4_prefix: int = Field(default=32, ge=8, le=32)
    """what one IPv4 client address is for the three limits above: its network of this many
    bits (8 to 32)"""
    ipv6_prefix: int = Field(default=64, ge=16, le=128)
    """what one IPv6 client address is for the limits: its network of this many bits
    (16 to 128); one IPv6 subscriber picks addresses at will from a /64 or more"""

    @field_validator("login_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            raise ValueError('must be a rate like "600/10 minutes" or "5/second"') from exc
        return value

    @field_validator("storage_uri")
    @classmethod
    def _storage(cls, value: str) -> str:
        if value.partition("://")[0] not in ("memory", "redis", "rediss"):
            raise ValueError('must be "memory://" or a Redis URL like "redis://host:6379/0"')
        return value


_EMAIL_DOMAIN = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.\-]*[a-z0-9])?$")
_CLAIM_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]{0,63}$")
_NO_RULE = (
    'no rule lets anyone in: set email_domains = ["*"] to let everyone the provider signs '
    "in through, or name the email_domains, allowed_emails, allowed_groups or "
    "required_claims that may pass"
)


def _email_domains(value: list[str]) -> list[str]:
    lowered = [entry.strip().lower() for entry in value]
    for entry in lowered:
        if entry != "*" and not _EMAIL_DOMAIN.match(entry):
            raise ValueError(f'{entry!r} is not a domain, "*.domain" (subdomains) or "*" (any)')
    return lowered


def _groups(value: list[str]) -> list[str]:
    # A group name the relay leaves out or refuses (relay/exact.py) could never pass.
    for entry in value:
        if "," in entry or flaw(entry) is not None:
            raise ValueError(
                f"{entry!r}: a group name with a comma, a control character or a space at "
                "either end can never match (X-Auth-Request-Groups could not carry it as it is)"
            )
    return value


def _claim_path(value: str) -> str:
    if not _CLAIM_PATH.match(value):
        raise ValueError('must be a claim name or a dotted path like "realm_access.roles"')
    return value


def _emails(value: list[str]) -> list[str]:
    for entry in value:
        if entry.count("@") != 1 or entry.startswith("@") or entry.endswith("@"):
            raise ValueError(f"{entry!r} is not an email address")
    return [entry.strip().lower() for entry in value]


class HostRules(_Section):
    """Narrower rules for one app, by the host the proxy forwards (X-Forwarded-Host): on top
    of the [access] rules, every key given here must pass too. The same names as /auth's
    query parameters."""

    allowed_groups: list[str] = Field(default_factory=list)
    """this app admits only members of one of these groups"""
    allowed_emails: list[str] = Field(default_factory=list)
    """...only these email addresses (verified)"""
    allowed_email_domains: list[str] = Field(default_factory=list)
    """...only addresses in these domains"""

    _check_domains = field_validator("allowed_email_domains")(_email_domains)
    _check_emails = field_validator("allowed_emails")(_emails)
    _check_groups = field_validator("allowed_groups")(_groups)


class AccessConfig(_Section):
    """Who may pass, judged at login and again at every /auth. Fail closed: with no rule at
    all nobody may, and startup says so."""

    # Email domains whose users may pass ("example.com"; "*.example.com" for its
    # subdomains; "*" for anyone the provider signs in). Or'ed with allowed_emails.
    email_domains: list[str] = Field(default_factory=list)
    """domains whose users may pass (`example.com`, `*.example.com` for subdomains, `*` for
    anyone); with no rule at all the relay refuses to start"""
    allowed_emails: list[str] = Field(default_factory=list)
    """single addresses that may pass, whatever their domain (or'ed with `email_domains`)"""
    # Groups (any one of them) a user must be in, read from groups_claim.
    allowed_groups: list[str] = Field(default_factory=list)
    """if set, a user must also be in one of these groups"""
    # Where the groups are: a claim, or a dotted path to a nested one ("realm_access.roles").
    groups_claim: str = "groups"
    """the claim (or dotted path, `realm_access.roles`) holding the groups; also feeds
    `X-Auth-Request-Groups`"""
    # Claims that must have these values (a list claim must contain the value).
    required_claims: dict[str, str | bool | int] = Field(default_factory=dict)
    """claims that must have these values (a list claim must contain it), e.g. `{ email_verified
    = true }`"""
    # An email the provider does not say is verified (email_verified true) matches no email
    # rule: false, absent (Entra ID) or any other value.
    allow_unverified_email: bool = False
    """let an address the provider does not mark `email_verified = true` (false, or no claim at
    all, as with Entra ID) match email rules"""
    # Narrower rules per app, keyed by the forwarded host ("wiki.example.com").
    hosts: dict[str, HostRules] = Field(default_factory=dict)
    """narrower rules per app by forwarded host: `{ "wiki.example.com" = { allowed_groups =
    ["editors"] } }` (keys `allowed_groups`, `allowed_emails`, `allowed_email_domains`)"""

    _check_domains = field_validator("email_domains")(_email_domains)
    _check_emails = field_validator("allowed_emails")(_emails)
    _check_groups = field_validator("allowed_groups")(_groups)

    _check_groups_claim = field_validator("groups_claim")(_claim_path)

    @field_validator("hosts")
    @classmethod
    def _plain_hosts(cls, value: dict[str, HostRules]) -> dict[str, HostRules]:
        # Read as a forwarded host is (relay/hosts.py), so the key is the one the proxy's
        # host is looked up by: "Wiki.Example.com." is wiki.example.com.
        hosts = {}
        for key, rules in value.items():
            host = parse_host(key)
            if host is None:
                raise ValueError(f"{key!r} is not a host or host:port")
            hosts[str(host)] = rules
        return hosts

    @model_validator(mode="after")
    def _some_rule(self) -> AccessConfig:
        if not (
            self.email_domains or self.allowed_emails or self.allowed_groups or self.required_claims
        ):
            raise ValueError(_NO_RULE)
        return self


class HeadersConfig(_Section):
    """What /auth tells the app about the user, as X-Auth-Request-* headers. Claims are
    named by claim or dotted path; the groups header comes from access.groups_claim."""

    user_claim: str = "preferred_username"  # X-Auth-Request-User (else the email, else sub)
    """claim for `X-Auth-Request-User` (falls back to the email, then `sub`)"""
    email_claim: str = "email"  # X-Auth-Request-Email
    """claim for `X-Auth-Request-Email`"""
    preferred_username_claim: str = "preferred_username"  # X-Auth-Request-Preferred-Username
    """claim for `X-Auth-Request-Preferred-Username`"""
    # More headers from claims: { "X-Auth-Request-Department" = "department" }.
    extra: dict[str, str] = Field(default_factory=dict)
    """more headers from claims: `{ "X-Auth-Request-Department" = "department" }`"""
    # The session's current access token as X-Auth-Request-Access-Token (oauth2-proxy's
    # pass_access_token) and/or Authorization: Bearer (set_authorization_header). Off:
    # whoever reads the app's requests can use the token as the user, at the provider.
    pass_access_token: bool = False
    """send the session's current access token as `X-Auth-Request-Access-Token`"""
    set_authorization_header: bool = False
    """send it as `Authorization: Bearer`"""

    @property
    def claims(self) -> list[str]:
        """Every claim (name or dotted path) a header shows, but the groups."""
        return [
            self.user_claim,
            self.email_claim,
            self.preferred_username_claim,
            *self.extra.values(),
        ]

    _check_claims = field_validator("user_claim", "email_claim", "preferred_username_claim")(
        _claim_path
    )

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: dict[str, str]) -> dict[str, str]:
        # The relay's own, and names that frame the response or steer the proxy: a claim
        # (the user's to choose, often) must never set those.
        reserved = {
            "content-length",
            "content-type",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "upgrade",
            "te",
            "trailer",
            "proxy-authenticate",
            "proxy-authorization",
            "set-cookie",
            "location",
            "host",
            "www-authenticate",
            "cookie",
            "x-auth-request-subject",
            "x-auth-request-user",
            "x-auth-request-email",
            "x-auth-request-groups",
            "x-auth-request-preferred-username",
            "x-auth-request-access-token",
            "authorization",
        }
        for header, claim in value.items():
            if not _HEADER_NAME.match(header):
                raise ValueError(f"{header!r} is not a header name")
            if header.lower() in reserved:
                raise ValueError(f"{header!r} is set by the relay or frames the response")
            if not _CLAIM_PATH.match(claim):
                raise ValueError(f"{claim!r} (for {header}) is not a claim name or dotted path")
        return {header.lower(): claim for header, claim in value.items()}


class AdminConfig(_Section):
    """The admin HTTP API under /admin (list, revoke, stats, prune): off without a token. The
    operator console (/console, web pages): off without allowed_groups or allowed_emails."""

    # The bearer token the API asks for; none: the API answers 404 to everyone.
    token: SecretStr | None = None
    """the bearer token of the admin API under `/admin`; ≥ 32 chars, no placeholder"""
    # Client addresses that may use the API (through a trusted proxy: the forwarded client);
    # on [server].internal_port, whoever reaches that port (with the token).
    allowed: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    """client addresses that may call the admin API (404 for others); on `server.internal_port`,
    whoever reaches it"""
    # Who the console admits, among people the relay signs in (who pass [access] too): a
    # member of one of these groups (read from [access] groups_claim), or one of these
    # verified email addresses.
    allowed_groups: list[str] = Field(default_factory=list)
    """the operator console (`/console`) admits signed-in people in one of these groups (read
    from `access.groups_claim`); off (404) while this and `allowed_emails` are empty"""
    allowed_emails: list[str] = Field(default_factory=list)
    """...or with one of these email addresses, verified as the access rules require"""

    _check_console_emails = field_validator("allowed_emails")(_emails)
    _check_console_groups = field_validator("allowed_groups")(_groups)

    @property
    def console(self) -> bool:
        return bool(self.allowed_groups or self.allowed_emails)

    @field_validator("token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _not_a_placeholder(value, f"generate one with {_GENERATE}")
            if len(value.get_secret_value()) < 32:
                raise ValueError(f"must be at least 32 characters: generate one with {_GENERATE}")
        return value

    @field_validator("allowed")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return ServerConfig._networks(value)


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """`debug`, `info`, `warning`, `error`"""
    format: Literal["json", "console"] = "json"
    """or `console` for development"""
    access_log: bool = True
    """one `http.request` line per request"""
    # The share of successful /auth access lines written (1 = every one, 0 = none). The proxy
    # logs each request anyway; every answer is counted in relay_request_duration_seconds.
    # A line costs about as much as the check itself, hence a sample by default.
    auth_success_sample: float = Field(default=0.01, ge=0.0, le=1.0)
    """share of *successful* `/auth` lines written (`1` = all, `0` = none); sampled lines carry
    `sample_rate`; refusals and errors are always written, every answer is counted in metrics"""


class RefreshConfig(_Section):
    """Refreshing a session's access token with its refresh token (RFC 6749 §6)."""

    enabled: bool = True
    """refresh a session's access token with its refresh token when due (see
    [Refresh](sessions.md#refresh))"""
    # Refresh this long before the access token expires (keep it below the provider's
    # access-token lifetime, or every check refreshes).
    margin: Annotated[int, BeforeValidator(_parse_duration), Field(ge=0)] = 60
    """refresh this long before the access token expires; keep it below the provider's token
    lifetime"""
    # While the provider is down (unreachable, timing out, 5xx), a session keeps working on
    # what it has for this long past its access token's expiry, then gets 503 until the
    # provider is back. 10 minutes rides out a provider restart or a short incident without
    # logging anyone out, while identity claims go stale by at most this much.
    outage_grace: Annotated[int, BeforeValidator(_parse_duration), Field(ge=0)] = 600
    """with the provider down, a session still answers 200 this long past its token's expiry,
    then 503 (never a logout)"""
    # After a failed refresh, no replica tries again for that session before this long:
    # a down provider is not asked again on every request.
    retry_interval: Duration = 15
    """after a failed refresh, no replica asks the provider again for that session before this"""


_ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")


class BearerIssuer(_Section):
    """An issuer besides the login provider whose JWT access tokens /auth accepts."""

    issuer: str
    """the issuer exactly as its tokens' `iss` says it; https except on localhost"""
    audiences: list[str] = Field(min_length=1)
    """a token from this issuer must name one of these in `aud`"""
    jwks_uri: str | None = None
    """its signing keys; unset: from its discovery document (`/.well-known/openid-configuration`)"""
    typ: Literal["at+jwt", "any"] = "at+jwt"
    """`at+jwt`: its tokens must say RFC 9068's `typ: at+jwt`; `any`: for issuers whose access
    tokens are plain JWTs (Entra ID, Keycloak), which an ID token for the same audience would
    then pass as"""

    @field_validator("issuer")
    @classmethod
    def _exact_issuer(cls, value: str) -> str:
        _https_unless_loopback(value)
        return value  # compared character for character with the token's iss

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, value: str | None) -> str | None:
        return None if value is None else _https_unless_loopback(value)


class BearerConfig(_Section):
    """API callers: `Authorization: Bearer` at /auth, judged by the token when the request
    has no relay cookie (off by default)."""

    enabled: bool = False
    """judge a request to `/auth` that carries `Authorization: Bearer` and no relay cookie by
    its token: a JWT against its issuer's keys, an opaque token by introspection"""
    audiences: list[str] = Field(default_factory=list)
    """a token from the login provider must name one of these in `aud` (the API's identifier
    at the provider; the relay's `client_id` only if ID tokens are to pass); required when
    enabled"""
    typ: Literal["at+jwt", "any"] = "at+jwt"
    """the login provider's tokens: `at+jwt` requires RFC 9068's `typ`; `any` accepts plain
    JWTs (see `bearer.issuers`)"""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"])
    """signature algorithms accepted; never `none` or `HS*`"""
    issuers: list[BearerIssuer] = Field(default_factory=list)
    """more issuers, each `[[bearer.issuers]]` with `issuer`, `audiences`, `jwks_uri`, `typ`"""
    introspection: bool = False
    """a token that is not a JWT is checked at the login provider's introspection endpoint
    (RFC 7662), the relay authenticating as its client"""
    introspection_cache: Annotated[int, BeforeValidator(_parse_duration), Field(ge=0, le=300)] = 30
    """an introspection answer is reused this long at most (never past the token's `exp`): a
    token revoked at the provider may pass this much longer"""
    max_cached: int = Field(default=10_000, ge=0, le=1_000_000)
    """verified tokens remembered per process, so a token seen before costs only its expiry
    check"""

    _check_algorithms = field_validator("algorithms")(_asymmetric)

    @model_validator(mode="after")
    def _audiences_when_enabled(self) -> BearerConfig:
        if self.enabled and not self.audiences and not self.introspection and not self.issuers:
            raise ValueError(
                "bearer.audiences: name the audience the API's tokens carry (a token for "
                "another audience never passes)"
            )
        if self.enabled and self.introspection and not self.audiences:
            raise ValueError("bearer.audiences: introspected tokens are checked against it too")
        return self


class Config(_Section):
    """The whole configuration; build it with :func:`load_config`."""

    server: ServerConfig
    # The default provider; with [[providers]], the first of them.
    provider: ProviderConfig
    providers: list[ProviderConfig] = Field(default_factory=list)
    """several providers, one `[[providers]]` table each with the keys of `[provider]`"""
    database: DatabaseConfig = DatabaseConfig()
    session: SessionConfig
    cache: CacheConfig = CacheConfig()
    redirects: RedirectsConfig = RedirectsConfig()
    limits: LimitsConfig = LimitsConfig()
    logging: LoggingConfig = LoggingConfig()
    # No default: AccessConfig() refuses itself (no rule), and says what to set.
    access: AccessConfig
    headers: HeadersConfig = HeadersConfig()
    admin: AdminConfig = AdminConfig()
    refresh: RefreshConfig = RefreshConfig()
    bearer: BearerConfig = BearerConfig()

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        problems = cross_section_errors(self.model_dump())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def login_providers(self) -> list[ProviderConfig]:
        """Every provider people sign in with, the default first."""
        return self.providers or [self.provider]

    @property
    def default_redirect(self) -> str:
        return self.redirects.default_url or self.server.public_url + "/"


def cross_section_errors(sections: Mapping[str, Any]) -> list[str]:
    """Rules that span sections, over the sections that validated on their own (so they are
    reported together with every other mistake); each line names its key."""
    problems = []
    session, server = sections.get("session"), sections.get("server")
    if session is not None and session["idle_timeout"] > session["absolute_lifetime"]:
        problems.append("session.idle_timeout: must not exceed session.absolute_lifetime")
    if (
        session is not None
        and server is not None
        and session["cookie_secure"]
        and urlsplit(server["public_url"]).scheme != "https"
    ):
        problems.append(
            "session.cookie_secure: browsers drop Secure cookies on an http public_url; "
            "set it to false for local development"
        )
    return problems


def _format_errors(error: ValidationError, section: str | None = None) -> list[str]:
    lines = []
    for item in error.errors():
        loc = [section, *item["loc"]] if section else list(item["loc"])
        key = ".".join(str(part) for part in loc)
        message = item["msg"].removeprefix("Value error, ")
        named = not item["loc"] and (not section or message.startswith(f"{section}."))
        if named:  # a rule across sections or keys names its key itself
            lines.extend(message.splitlines())
            continue
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known key"
        lines.append(f"{key}: {message}")
    return lines


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate a config file; raise ConfigError listing every problem."""
    try:
        with open(path, "rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"config: file not found: {path}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config: {path} is not valid TOML: {exc}"]) from None
    return config_from_mapping(data, os.environ if env is None else env)


@dataclass(frozen=True)
class DatabaseOnly:
    """What the commands that only touch the database (migrate, prune, sessions) need."""

    database: DatabaseConfig
    logging: LoggingConfig
    prune_batch_size: int


class _PruneBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prune_batch_size: int = Field(default=500, ge=1, le=100_000)


def load_database_config(
    path: str | Path | None, database_url: str | None, env: Mapping[str, str] | None = None
) -> DatabaseOnly:
    """[database] and [logging] (and session.prune_batch_size) from a config file, or none,
    with ``database_url`` over its url: the rest of the file (provider, secrets, access
    rules) may be missing or unfinished. Raise ConfigError naming every problem in those."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError([f"config: file not found: {path}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config: {path} is not valid TOML: {exc}"]) from None
    merged = _apply_environment(data, os.environ if env is None else env)
    if database_url is not None:
        merged.setdefault("database", {})["url"] = database_url
    problems: list[str] = []
    parsed: dict[str, Any] = {}
    for name, model in (("database", DatabaseConfig), ("logging", LoggingConfig)):
        try:
            parsed[name] = model.model_validate(merged.get(name) or {})
        except ValidationError as exc:
            problems.extend(_format_errors(exc, section=name))
    try:
        batch = _PruneBatch.model_validate(merged.get("session") or {}).prune_batch_size
    except ValidationError as exc:
        problems.extend(_format_errors(exc, section="session"))
    if problems:
        raise ConfigError(problems)
    return DatabaseOnly(parsed["database"], parsed["logging"], batch)


def config_from_mapping(data: Mapping[str, Any], env: Mapping[str, str]) -> Config:
    """Validate an already-parsed config with the environment's overrides applied: each
    section on its own, then the rules across sections, every problem reported at once."""
    merged = _apply_environment(data, env)
    problems = [f"{name}: is not a known key" for name in merged if name not in Config.model_fields]
    sections: dict[str, Any] = {}
    if "providers" in merged:
        problems.extend(_several_providers(merged, sections))
    for name, field in Config.model_fields.items():
        if name == "providers" or (name == "provider" and "providers" in merged):
            continue
        model = cast(type[_Section], field.annotation)
        raw = merged.get(name)
        if raw is None and field.is_required() and name not in _JUDGED_WHEN_ABSENT:
            problems.append(f"{name}: is required")
            continue
        try:
            sections[name] = model.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            problems.extend(_format_errors(exc, section=name))
    problems.extend(
        cross_section_errors(
            {
                name: section.model_dump()
                for name, section in sections.items()
                if isinstance(section, BaseModel)
            }
        )
    )
    if problems:
        raise ConfigError(problems)
    return Config(**sections)


def _several_providers(merged: Mapping[str, Any], sections: dict[str, Any]) -> list[str]:
    """[[providers]]: each entry validated as [provider] is, named uniquely, each issuer and
    host belonging to one of them; the first is also ``provider``, the default."""
    entries = merged["providers"]
    if "provider" in merged:
        return ["provider: give either [provider] or [[providers]], not both"]
    if not isinstance(entries, list) or not entries:
        return ["providers: one [[providers]] table per provider, at least one"]
    problems: list[str] = []
    parsed: list[ProviderConfig] = []
    for index, raw in enumerate(entries):
        try:
            parsed.append(ProviderConfig.model_validate(raw if isinstance(raw, dict) else {}))
        except ValidationError as exc:
            problems.extend(_format_errors(exc, section=f"providers[{index}]"))
    if problems:
        return problems
    seen: dict[str, set[str]] = {"name": set(), "issuer": set(), "host": set()}
    for index, provider in enumerate(parsed):
        for what, values in (
            ("name", [provider.name]),
            ("issuer", [provider.issuer]),
            ("host", provider.hosts),
        ):
            for value in values:
                if value in seen[what]:
                    problems.append(f"providers[{index}].{what}: {value!r} names two providers")
                seen[what].add(value)
    sections["providers"] = parsed
    sections["provider"] = parsed[0]
    return problems


def _copied(value: Any) -> Any:
    """A section, or the list of [[providers]] tables, copied: the caller's data is not ours."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return [dict(item) if isinstance(item, dict) else item for item in value]
    return value


def _apply_environment(data: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay RELAY_<SECTION>__<KEY> variables; values that parse as JSON lists are lists."""
    merged: dict[str, Any] = {key: _copied(value) for key, value in data.items()}
    for name, raw in env.items():
        if not name.upper().startswith(_ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(_ENV_PREFIX) :].lower().partition("__")
        if section == "providers":
            # RELAY_PROVIDERS__<NAME>__<KEY>: a key of the [[providers]] entry so named.
            provider, _, key = key.partition("__")
            entries = merged.get("providers")
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and entry.get("name") == provider and key:
                    entry[key] = raw
            continue
        value: Any = raw
        if raw.lstrip().startswith("["):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                raise ConfigError([f"{section}.{key}: {name} is not a JSON list"]) from None
        target = merged.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = value
    return merged


def masked(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, secrets replaced by "**********" (the database
    password included)."""
    data = config.model_dump(mode="json")
    data["database"]["url"] = config.database.display_url
    return data
