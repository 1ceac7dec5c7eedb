"""Who may pass: the [access] rules, judged on a session's claims at login and at every
/auth, and narrower rules for one app (by the forwarded host, or /auth's query parameters,
named as oauth2-proxy names them).

A rule set passes when every part it names passes: an email rule (email_domains or'ed with
allowed_emails), a group rule (one of allowed_groups), each required claim. Narrower rules
add parts; they never widen. The judgement is pure: claims in, a refusal or None out.

Before any rule, the claims that name the user to the rules or to the app must read as the app
will receive them (relay/exact.py): a rule is only as good as the value it judged.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from relay.config import AccessConfig
from relay.exact import flaw, listed
from relay.hosts import Host, parse_host

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
    # The config's own email rule passes on an address or a domain (oauth2-proxy's
    # authenticated emails or email domains); narrower rules are each a rule of their own.
    emails_or_domains: bool = False
    unreadable: tuple[str, ...] = ()  # query parameters named like rules that say nothing


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
    def __init__(self, config: AccessConfig, shown: Iterable[str] = ()) -> None:
        """``shown``: the claims (names or dotted paths) the headers give the app."""
        self._allow_unverified = config.allow_unverified_email
        self.groups_path = tuple(config.groups_claim.split("."))
        # Every claim that names the user to the rules or to the app: sub, the email the
        # rules read, the groups, the required claims, and what the headers show.
        exact = {"sub", "email", config.groups_claim, *config.required_claims, *shown}
        self._exact = tuple((name, tuple(name.split("."))) for name in sorted(exact))
        self.rules = Rules(
            emails=frozenset(config.allowed_emails),
            domains=tuple(config.email_domains),
            groups=frozenset(config.allowed_groups),
            claims=tuple(
                (name, tuple(name.split(".")), value)
                for name, value in config.required_claims.items()
            ),
            emails_or_domains=True,
        )
        self._hosts = {
            host: Rules(
                emails=frozenset(rules.allowed_emails),
                domains=tuple(rules.allowed_email_domains),
                groups=frozenset(rules.allowed_groups),
            )
            # The config's keys are read as forwarded hosts are (relay/config.py refuses any
            # that does not read), so a key and a host match exactly when they name one host.
            for host, rules in config.hosts.items()
        }

    @property
    def has_host_rules(self) -> bool:
        return bool(self._hosts)

    def groups(self, claims: Mapping[str, Any]) -> list[str]:
        """The groups, as the rules judge them and X-Auth-Request-Groups carries them: a group
        with a comma in its name is none (relay/exact.py), rather than read as two."""
        return listed(strings(claim(claims, self.groups_path)))

    def refusal(
        self, claims: Mapping[str, Any], host: str | None = None, query: str = ""
    ) -> Refusal | None:
        """Why these claims may not pass (the config's rules, then the forwarded host's, then
        the query string's), or None when they may. ``host`` is the forwarded host as a
        trusted proxy sent it (every X-Forwarded-Host line, comma-joined), None when none
        did."""
        refused = self._ambiguous(claims)
        if refused is None:
            refused = self._judge(claims, self.rules)
        if refused is None and host is not None and self._hosts:
            refused = self._judge_host(claims, host)
        if refused is None and query:
            # One rule set per parameter given, each to pass (a rule given twice is and'ed).
            for rules in query_rules(query):
                refused = self._judge(claims, rules)
                if refused is not None:
                    break
        return refused

    def _ambiguous(self, claims: Mapping[str, Any]) -> Refusal | None:
        """A claim the rules or the app read that would reach the app as another value (or as
        none): "ali\tce" or " alice " must not pass as alice, so neither passes at all."""
        for name, path in self._exact:
            for text in strings(claim(claims, path)):
                problem = flaw(text)
                if problem is not None:
                    return Refusal(
                        "access.ambiguous_claim",
                        "Your account at the identity provider has a name or attribute that "
                        "cannot be passed on exactly (a control character, or a space at "
                        "either end); tell this site's operator.",
                        f"{name}: {problem}",
                    )
        return None

    def _judge_host(self, claims: Mapping[str, Any], host: str) -> Refusal | None:
        parsed = parse_host(host)
        if parsed is None:
            # The proxy routed this request by a host it read its own way (nginx takes
            # "app.example.com:1:2" as app.example.com, Caddy "[app.example.com]"): which
            # host's rules apply is unknown, so none is assumed away.
            return Refusal(
                "access.unreadable_host",
                "This page's address is not one the relay can read; tell its operator.",
                f"host {host[:100]!r}",
            )
        rules = self.host_rules(parsed)
        refused = None if rules is None else self._judge(claims, rules)
        if refused is not None:
            refused = Refusal(refused.reason, refused.message, f"host {parsed}")
        return refused

    def operator(
        self, claims: Mapping[str, Any], groups: Collection[str], emails: Collection[str]
    ) -> bool:
        """Whether these claims name one of the operators the console admits ([admin]
        allowed_groups or allowed_emails): in one of the groups, or with one of the
        addresses, verified as the [access] rules require."""
        if self._ambiguous(claims) is not None:
            return False
        if not set(groups).isdisjoint(self.groups(claims)):
            return True
        return bool(emails) and self._email(claims, emails, ()) is None

    def host_rules(self, host: Host) -> Rules | None:
        """The rules for a forwarded host: keyed with its port, else without."""
        for candidate in (str(host), host.name):
            rules = self._hosts.get(candidate)
            if rules is not None:
                return rules
        return None

    def _judge(self, claims: Mapping[str, Any], rules: Rules) -> Refusal | None:
        if rules.unreadable:
            # A misspelt rule (allowed_group=), one a proxy mangled (Caddy escapes "=" in a
            # placeholder: allowed_groups%3Dadmins) or one left empty (an unset variable in
            # the proxy's config) must not pass as no rule at all.
            name = rules.unreadable[0]
            return Refusal(
                "access.empty_rule" if name in _NARROWING else "access.unknown_rule",
                "This page asks for an access rule the relay cannot read; tell its operator.",
                name[:64],
            )
        if rules.emails_or_domains and (rules.emails or rules.domains):
            refused = self._email(claims, rules.emails, rules.domains)
            if refused is not None:
                return refused
        # Narrower rules, as oauth2-proxy's /oauth2/auth judges them: each one given passes.
        for emails, domains in ((rules.emails, ()), ((), rules.domains)):
            if not rules.emails_or_domains and (emails or domains):
                refused = self._email(claims, emails, domains)
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
        # OIDC Core §5.1: only email_verified true says the provider has checked that the
        # user controls the address; false, absent (Entra ID never sends it) or anything else
        # leaves it an address anyone could have typed. "true" is the spelling of providers
        # that send strings (Cognito's userinfo); "TRUE", 1 or "yes" are nobody's.
        verified = claims.get("email_verified")
        if verified is not True and verified != "true" and not self._allow_unverified:
            return Refusal(
                "access.email_unverified",
                "Your email address is not verified at the identity provider.",
                "email_verified absent" if verified is None else "email_verified not true",
            )
        email = email.lower()
        domain = email.rpartition("@")[2]
        if email in emails or any(_domain_matches(domain, allowed) for allowed in domains):
            return None
        return Refusal("access.email_not_allowed", "Your email address is not allowed here.")


def query_rules(query: str) -> list[Rules]:
    """The narrower rules in /auth's query string: one rule set per parameter (its values
    comma-separated), each of which must pass, so a rule given twice is and'ed (oauth2-proxy
    reads the first only; or'ed, a second would widen the first). Other parameters are not
    ours and are ignored, except those named like a rule: a rule the relay cannot read
    refuses, rather than letting everyone through. Those come first, so their refusal is
    the one the log shows."""
    unreadable: list[Rules] = []
    given: list[Rules] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if not _named_like_a_rule(name):
            continue
        values = [v.strip() for v in value.split(",") if v.strip()]
        if name not in _NARROWING or not values:
            unreadable.append(Rules(unreadable=(name,)))
        elif name == QUERY_GROUPS:
            given.append(Rules(groups=frozenset(values)))
        elif name == QUERY_EMAILS:
            given.append(Rules(emails=frozenset(v.lower() for v in values)))
        else:
            given.append(Rules(domains=tuple(v.lower() for v in values)))
    return [*unreadable, *given]


def _named_like_a_rule(name: str) -> bool:
    # Read more loosely than any proxy or framework would: case, width, and spaces, controls
    # or punctuation anywhere (" allowed_groups", "Allowed-Groups", "allowed_groups[]"). Only
    # the exact spellings are rules; the rest of what matches here refuses.
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "allowed" in "".join(c for c in folded if c.isalnum())


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
