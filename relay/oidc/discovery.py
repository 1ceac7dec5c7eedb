"""Provider metadata (OpenID Connect Discovery 1.0), fetched once and cached with a TTL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import structlog

from relay.background import stop_if_cancelling
from relay.config import is_loopback_host
from relay.errors import ProviderBadResponse, ProviderError, ProviderUnavailable
from relay.oidc.http import get_json

log = structlog.get_logger("relay.oidc")


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    signing_algorithms: tuple[str, ...]
    end_session_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    iss_parameter_supported: bool = False
    introspection_endpoint: str | None = None  # RFC 8414 §2 (RFC 7662)
    revocation_endpoint: str | None = None  # RFC 8414 §2 (RFC 7009)
    par_endpoint: str | None = None  # RFC 9126 §5 pushed_authorization_request_endpoint
    require_par: bool = False  # RFC 9126 §5 require_pushed_authorization_requests


def parse_metadata(
    doc: dict[str, Any], expected_issuer: str, template: str | None = None
) -> ProviderMetadata:
    """``template``: a per-tenant provider's issuer with {tenantid} (config.tenant_template):
    what its multi-tenant document calls itself, and then the metadata's issuer."""
    # Discovery §4.3: the issuer in the document MUST be identical to the one we asked (a
    # multi-tenant endpoint's says {tenantid} in its place, and each token its tenant's).
    expected_issuer = template or expected_issuer
    if doc.get("issuer") != expected_issuer:
        advertised = str(doc.get("issuer"))[:200]
        raise ProviderBadResponse(
            "discovery.issuer_mismatch",
            f"the provider says its issuer is {advertised!r}, provider.issuer is "
            f"{expected_issuer!r}: they must be identical (a trailing slash counts)",
        )
    endpoints = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        endpoints[name] = _endpoint(doc, name, required=True)
    algorithms = doc.get("id_token_signing_alg_values_supported")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms):
        raise ProviderBadResponse("discovery.missing_id_token_signing_alg_values_supported")
    return ProviderMetadata(
        issuer=expected_issuer,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        jwks_uri=endpoints["jwks_uri"],
        signing_algorithms=tuple(algorithms),
        end_session_endpoint=_endpoint(doc, "end_session_endpoint", required=False),
        userinfo_endpoint=_endpoint(doc, "userinfo_endpoint", required=False),
        iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported") is True,
        introspection_endpoint=_endpoint(doc, "introspection_endpoint", required=False),
        revocation_endpoint=_endpoint(doc, "revocation_endpoint", required=False),
        par_endpoint=_endpoint(doc, "pushed_authorization_request_endpoint", required=False),
        require_par=doc.get("require_pushed_authorization_requests") is True,
    )


def endpoint_url(doc: dict[str, Any], name: str) -> str:
    """A required endpoint of a metadata document: https (http on loopback), or a 502."""
    return str(_endpoint(doc, name, required=True))


def _endpoint(doc: dict[str, Any], name: str, *, required: bool) -> Any:
    value = doc.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ProviderBadResponse(f"discovery.missing_{name}")
    parts = urlsplit(value)
    secure = parts.scheme == "https" or (
        parts.scheme == "http" and is_loopback_host(parts.hostname)
    )
    if not secure or not parts.hostname:
        raise ProviderBadResponse(f"discovery.insecure_{name}")
    return value


class Discovery:
    """The provider's metadata, refetched after ``ttl`` seconds by one caller at a time.

    Before the first success, attempts are spaced by an exponential backoff (1s, 2s, 4s...
    up to a minute) whoever asks — a flood of /login cannot hammer a provider that is down —
    and every failure is a ProviderUnavailable (503). After a success, a failed refresh keeps
    the last good document: a provider blip must not stop logins that could complete.
    """

    MAX_BACKOFF = 60.0

    def __init__(
        self,
        client: httpx2.AsyncClient,
        issuer: str,
        ttl: int,
        clock: Callable[[], float],
        template: str | None = None,
    ) -> None:
        self._client = client
        self._issuer = issuer
        self._template = template
        self._ttl = ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._metadata: ProviderMetadata | None = None
        self._fetched_at = 0.0
        self._failures = 0
        self._next_attempt = float("-inf")
        self.last_error: str | None = "not fetched yet"

    @property
    def url(self) -> str:
        # Discovery §4: the issuer, any trailing "/" removed, then the well-known path.
        return self._issuer.rstrip("/") + "/.well-known/openid-configuration"

    def seconds_until_retry(self) -> float:
        return max(0.0, self._next_attempt - self._clock())

    async def get(self) -> ProviderMetadata:
        if self._metadata is not None and not self._stale():
            return self._metadata
        async with self._lock:
            if self._metadata is not None and not self._stale():
                return self._metadata  # someone refreshed while we waited
            if self._metadata is None and self._clock() < self._next_attempt:
                raise ProviderUnavailable("discovery.backoff", self.last_error or "")
            try:
                doc = await get_json(self._client, self.url, "discovery")
                self._metadata = parse_metadata(doc, self._issuer, self._template)
            except ProviderError as exc:
                self._failed(exc)
                if self._metadata is None:
                    raise ProviderUnavailable("discovery.unavailable", exc.reason) from exc
            else:
                self._failures, self.last_error = 0, None
            self._fetched_at = self._clock()  # after a failure: retry after another ttl
            return self._metadata

    def _failed(self, exc: ProviderError) -> None:
        self.last_error = exc.reason
        self._failures += 1
        backoff = min(2.0 ** (self._failures - 1), self.MAX_BACKOFF)
        self._next_attempt = self._clock() + backoff
        log.warning(
            "provider.unavailable",
            reason=exc.reason,
            detail=exc.detail or None,
            url=self.url,
            retry_in_s=backoff,
        )

    def _stale(self) -> bool:
        return self._clock() - self._fetched_at >= self._ttl

    async def warm_up(self) -> None:
        """Fetch until the first success, waiting out the backoff between attempts. The
        first failure (at startup) is also said once, plainly: a relay that cannot use its
        provider must not look healthy for its first lines."""
        while self._metadata is None:
            try:
                await self.get()
            except ProviderError as exc:
                stop_if_cancelling()
                if self._failures == 1:
                    _unusable(exc, self.url)
                await asyncio.sleep(max(self.seconds_until_retry(), 0.5))
        log.info("provider.ready", issuer=self._issuer)


def _unusable(exc: ProviderError, url: str) -> None:
    cause = exc.__cause__ if isinstance(exc.__cause__, ProviderError) else exc
    # A provider that calls itself by another issuer is a config mistake that no retry
    # fixes: an error. One that does not answer may be starting too: a warning.
    mismatch = cause.reason == "discovery.issuer_mismatch"
    (log.error if mismatch else log.warning)(
        "provider.unusable",
        reason=cause.reason,
        detail=cause.detail or None,
        url=url,
        hint="nobody can sign in until this is fixed (check provider.issuer, and that this "
        "machine reaches it); people signed in already keep passing, and the relay keeps "
        "trying",
    )
