"""The identity providers a relay signs people in with: one (``[provider]``) or several
(``[[providers]]``), each with its own issuer, client, scopes, keys and caches.

Which one a login uses: the one ``/login?provider=<name>`` names, else the one whose ``hosts``
hold the host the person is going to (the return URL's, else the forwarded host), else, with
one provider, that one; with several and no match, the person chooses (endpoints/login.py).
Which one a session, a refresh, a sign-out or a logout token belongs to: the issuer of its ID
token, as that provider's ``issuer`` says it (``issues``). A provider whose issuer has a
``{tenantid}`` placeholder (Entra ID's ``common`` and ``organizations``) issues for each of
its ``tenants`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx2

from relay.config import TENANT, ProviderConfig
from relay.grants import Grants
from relay.hosts import parse_host
from relay.oidc.discovery import Discovery
from relay.oidc.jwks import JwksCache
from relay.oidc.tokens import unverified_claims
from relay.store.revocation import Ended


@dataclass(frozen=True)
class Provider:
    config: ProviderConfig
    discovery: Discovery
    jwks: JwksCache
    grants: Grants

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def label(self) -> str:
        return self.config.label or self.config.name

    def issues(self, issuer: str) -> bool:
        """Whether a token saying ``iss: issuer`` may be this provider's: its issuer exactly,
        or, for a per-tenant issuer, the issuer of one of its allowed tenants."""
        return issuer == self.config.issuer or issuer in self.tenant_issuers

    @property
    def tenant_issuers(self) -> frozenset[str]:
        template = self.config.issuer_template
        if template is None:
            return frozenset()
        return frozenset(template.replace(TENANT, tenant) for tenant in self.config.tenants)


class Providers:
    def __init__(
        self,
        configs: Sequence[ProviderConfig],
        http: httpx2.AsyncClient,
        clock: Callable[[], float],
    ) -> None:
        self.all: list[Provider] = []
        for config in configs:
            discovery = Discovery(
                http, config.issuer, config.metadata_ttl, clock, config.issuer_template
            )
            self.all.append(
                Provider(
                    config,
                    discovery,
                    JwksCache(http, config.jwks_refresh_cooldown, clock),
                    Grants(http, discovery, config),
                )
            )
        self.default = self.all[0]
        self._named = {p.name: p for p in self.all}
        self._hosts = {host: p for p in self.all for host in p.config.hosts}

    @property
    def several(self) -> bool:
        return len(self.all) > 1

    def named(self, name: str) -> Provider | None:
        return self._named.get(name)

    def for_hosts(self, hosts: Iterable[str | None]) -> Provider | None:
        """The provider configured for the first of these hosts that has one (a host with
        its port, else without), or, with one provider, that one; None: let the person
        choose."""
        for raw in hosts:
            host = parse_host(raw) if raw else None
            if host is None:
                continue
            for key in (str(host), host.name):
                found = self._hosts.get(key)
                if found is not None:
                    return found
        return None if self.several else self.default

    def for_issuer(self, issuer: object) -> Provider | None:
        """The provider that issues as ``issuer``; the default one for a row from before the
        relay knew several (no issuer recorded) or with one provider; None for an issuer no
        configured provider has (one since removed from the config)."""
        if not self.several or issuer is None:
            return self.default
        if not isinstance(issuer, str):
            return None
        for provider in self.all:
            if provider.issues(issuer):
                return provider
        return None

    def of_id_token(self, id_token: str | None) -> Provider | None:
        """The provider of a session, from its ID token (verified when it came, sealed since)."""
        return self.for_issuer(unverified_claims(id_token).get("iss") if id_token else None)

    async def revoke_grants(self, ended: Iterable[Ended]) -> None:
        """Each ended session's refresh token revoked at its own provider (relay/grants.py)."""
        by_provider: dict[str, list[Ended]] = {}
        for session in ended:
            provider = self.of_id_token(session.id_token)
            if provider is not None:
                by_provider.setdefault(provider.name, []).append(session)
        for name, sessions in by_provider.items():
            await self._named[name].grants.revoke(sessions)
