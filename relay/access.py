"""Who may pass: the [access] rules, judged on a session's claims at login and at every
/auth, and narrower rules for one app (by the forwarded host, or /auth's query parameters,
named as oauth2-proxy names them).

A rule set passes when every part it names passes: an email rule (email_domains or'ed with
allowed_emails), a group rule (one of allowed_groups), each required claim. Narrower rules
add parts; they never widen. The judgement is pure: claims in, a refusal or None out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from relay.config import AccessConfig

# The names /auth's query string narrows by, as oauth2-proxy's /oauth2/auth takes them.
QUERY_GROUPS = "allowed_groups"
QUERY_EMAILS = "allowed_emails"
QUERY_DOMAINS = "allowed_email_domains"
_NARROWING = (QUERY_GROUPS, QUERY_EMAILS, QUERY_DOMAINS)


@dataclass(frozen=True)
class Refusal:
    reason: str  # access.<rule>: for the log and the JSON error
    message: str  # for the person: what failed, never a claim's value
    detail: str = ""  # for the log only (which claim, which host)


@dataclass(frozen=True)
class Rules:
    """One set of rules: the config's, a host's, or a query string's."""

    emails: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    groups: frozenset[str] = frozenset()
    claims: tuple[tuple[str, tuple[str, ...], str | bool | int], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.emails or self.domains or self.groups or self.claims)


def claim(claims: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The claim at a dotted path ("realm_access.roles"), or None."""
    value: Any = claims
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def strings(value: Any) -> list[str]:
    """A claim read as a list of strings: a list (its string members) or one string."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


class Access:
    def __init__(self, config: AccessConfig) -> None:
        self._allow_unverified = config.allow_unverified_email
        self.groups_path = tuple(config.groups_claim.split("."))
        self.rules = Rules(
            emails=frozenset(config.allowed_emails),
            domains=tuple(config.email_domains),
            groups=frozenset(config.allowed_groups),
            claims=tuple(
                (name, tuple(name.split(".")), value)
                for name, value in config.required_claims.items()
            ),
        )
        self._hosts = {
            host: Rules(
                emails=frozenset(rules.allowed_emails),
                domains=tuple(rules.allowed_email_domains),
                groups=frozenset(rules.allowed_groups),
            )
            for host, rules in config.hosts.items()
        }

    @property
    def has_host_rules(self) -> bool:
        return bool(self._hosts)

    def groups(self, claims: Mapping[str, Any]) -> list[str]:
        return strings(claim(claims, self.groups_path))

    def refusal(
        self, claims: Mapping[str, Any], host: str | None = None, query: str = ""
    ) -> Refusal | None:
        """Why these claims may not pass (the config's rules, then the forwarded host's, then
        the query string's), or None when they may."""
        refused = self._judge(claims, self.rules)
        if refused is None and host is not None:
            rules = self.host_rules(host)
            if rules is not None:
                refused = self._judge(claims, rules)
                if refused is not None:
                    refused = Refusal(refused.reason, refused.message, f"host {host}")
        if refused is None and query:
            rules = query_rules(query)
            if not rules.empty:
                refused = self._judge(claims, rules)
        return refused

    def host_rules(self, host: str) -> Rules | None:
        host = host.lower()
        rules = self._hosts.get(host)
        if rules is None and ":" in host and not host.endswith("]"):
            rules = self._hosts.get(host.rpartition(":")[0])  # the host without its port
        return rules

    def _judge(self, claims: Mapping[str, Any], rules: Rules) -> Refusal | None:
        if rules.emails or rules.domains:
            refused = self._email(claims, rules.emails, rules.domains)
            if refused is not None:
                return refused
        if rules.groups and rules.groups.isdisjoint(self.groups(claims)):
            return Refusal("access.group_not_allowed", "You are not in a group allowed here.")
        for name, path, wanted in rules.claims:
            if not _matches(claim(claims, path), wanted):
                return Refusal(
                    "access.claim_mismatch",
                    "Your account lacks an attribute this site requires.",
                    name,
                )
        return None

    def _email(
        self, claims: Mapping[str, Any], emails: Collection[str], domains: Collection[str]
    ) -> Refusal | None:
        if "*" in domains:
            return None  # anyone the provider signs in, with or without an address
        email = claims.get("email")
        if not isinstance(email, str) or email.count("@") != 1:
            return Refusal(
                "access.email_missing", "The identity provider gave no email address for you."
            )
        # OIDC Core §5.1: email_verified false means the provider has not checked that the
        # user controls the address; anyone could have typed it. Some providers send strings.
        if claims.get("email_verified") in (False, "false") and not self._allow_unverified:
            return Refusal(
                "access.email_unverified",
                "Your email address is not verified at the identity provider.",
            )
        email = email.lower()
        domain = email.rpartition("@")[2]
        if email in emails or any(_domain_matches(domain, allowed) for allowed in domains):
            return None
        return Refusal("access.email_not_allowed", "Your email address is not allowed here.")


def query_rules(query: str) -> Rules:
    """The narrower rules in /auth's query string (comma-separated values); other parameters
    are not ours and are ignored."""
    given: dict[str, list[str]] = {}
    for name, value in parse_qsl(query):
        if name in _NARROWING:
            given.setdefault(name, []).extend(v.strip() for v in value.split(",") if v.strip())
    return Rules(
        emails=frozenset(e.lower() for e in given.get(QUERY_EMAILS, ())),
        domains=tuple(d.lower() for d in given.get(QUERY_DOMAINS, ()) if d != "*"),
        groups=frozenset(given.get(QUERY_GROUPS, ())),
    )


def _domain_matches(domain: str, allowed: str) -> bool:
    if allowed.startswith("*."):
        return domain.endswith(allowed[1:])  # subdomains only: ".example.com"
    return domain == allowed


def _matches(value: Any, wanted: str | bool | int) -> bool:
    # Strictly typed: true is not 1, "true" is not true.
    if type(value) is type(wanted) and value == wanted:
        return True
    if isinstance(value, list):
        return any(type(item) is type(wanted) and item == wanted for item in value)
    return False
