"""What the relay does, without HTTP: start a login, finish it, check a session, log out.

Endpoints turn requests into these calls and results into responses; everything that talks to
the database or the provider is reached from here. (A little over ~300 lines: the login and
the callback are one protocol, read best top to bottom in one place.)
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import httpx2
import structlog

from relay.access import Access
from relay.claims import identity
from relay.config import Config
from relay.crypto import SealError, hash_id, looks_like_id, new_id, short_hash
from relay.devices import Browser, recorded
from relay.errors import (
    AccessDenied,
    BadRequest,
    Misconfigured,
    RelayError,
    TooManyRequests,
)
from relay.metrics import Metrics
from relay.oidc.client import (
    Asked,
    TokenResponse,
    authorization_url,
    exchange_code,
    fetch_userinfo,
)
from relay.oidc.discovery import ProviderMetadata
from relay.oidc.tokens import (
    expectations,
    unverified_claims,
    validate_id_token,
    validate_logout_token,
)
from relay.providers import Provider, Providers
from relay.redirects import return_url
from relay.store.pending import PendingLogin, PendingLogins
from relay.store.records import Tokens
from relay.store.sessions import Sessions

log = structlog.get_logger("relay.flows")

# The state a sign-out sends the provider, which hands it back to the relay's page.
SIGNED_OUT = "signed-out"

_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class LoginStarted:
    provider_url: str
    login_id: str  # the browser's new login cookie


@dataclass(frozen=True)
class LoginFinished:
    session_id: str
    return_to: str
    max_age: int


class Flows:
    def __init__(
        self,
        *,
        config: Config,
        http: httpx2.AsyncClient,
        providers: Providers,
        pending: PendingLogins,
        sessions: Sessions,
        metrics: Metrics,
        clock: Callable[[], float],
        access: Access,
    ) -> None:
        self.config = config
        self._access = access
        self._http = http
        self.providers = providers
        self._pending = pending
        self.sessions = sessions
        self._metrics = metrics
        self._clock = clock

    def now(self) -> int:
        return int(self._clock())

    def return_url(self, rd: str | None) -> str:
        return return_url(rd, self.config)

    async def start_login(
        self,
        rd: str | None,
        client: str | None,
        asked: Asked | None = None,
        provider: Provider | None = None,
    ) -> LoginStarted:
        """Write a pending login and build the provider URL. ``client`` is the client's
        address or network (``ratelimit.client_bucket``; None when a trusted proxy did not
        say): its pending logins are capped.

        The login is bound to a login id minted here, never to the one the browser brought:
        without the ``__Host-`` prefix (cookie_domain, cookie_secure = false) that one may
        have been planted by a sibling site that knows it, and re-using it would keep the
        planted value alive and bind the browser's own login to it. The price: a login the
        browser started earlier (another tab) can no longer complete; its callback offers to
        sign in again to where that tab was going (``_replaced``)."""
        return_to = self.return_url(rd)
        provider = provider or self.providers.default
        metadata = await provider.discovery.get()
        now = self.now()
        login_id = new_id()
        binding_hash = hash_id(login_id)
        session, limits = self.config.session, self.config.limits
        state, nonce = new_id(), new_id()
        verifier = secrets.token_urlsafe(48)  # RFC 7636 §4.1: 43-128 unreserved characters
        state_hash = hash_id(state)
        asked = asked or Asked()
        login = PendingLogin(
            nonce,
            verifier,
            return_to,
            now,
            now + session.pending_lifetime,
            asked_acr=asked.acr_values,
            asked_max_age=asked.max_age,
            provider=provider.config.issuer,
        )
        client_hash = None if client is None else hash_id(client)
        added = await self._pending.add(
            state_hash,
            binding_hash,
            login,
            client_hash=client_hash,
            max_per_client=limits.max_pending_per_address,
            max_pending=limits.max_pending,
        )
        if added.table_full:
            log.warning(
                "login.refused", reason="table_full", client=client, max_pending=limits.max_pending
            )
            raise TooManyRequests("login.table_full")
        if not added.stored:
            log.warning(
                "login.refused",
                reason="too_many_pending_for_address",
                client=client,
                max_pending_per_address=limits.max_pending_per_address,
            )
            raise TooManyRequests("login.too_many_pending")
        if added.evicted:
            log.warning("login.evicted", count=added.evicted, max_pending=limits.max_pending)
        log.info(
            "login.started",
            login=short_hash(state_hash),
            return_to=return_to,
            provider=provider.name if self.providers.several else None,
        )
        url = await authorization_url(
            self._http,
            metadata,
            provider=provider.config,
            redirect_uri=self.config.server.redirect_uri,
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            asked=asked,
        )
        return LoginStarted(provider_url=url, login_id=login_id)

    async def finish_login(
        self,
        params: Mapping[str, str],
        login_id: str | None,
        browser: Browser | None = None,
        *,
        replacing: str | None = None,
    ) -> LoginFinished:
        """The callback: the code traded, the ID token validated, a session written. A live
        session the browser already had (``replacing``, its cookie's id) ends: the new one
        takes its place in the cookie, upgraded when a step-up asked for this login."""
        try:
            done = await self._finish_login(params, login_id, browser or Browser())
        except RelayError as exc:
            forbidden = isinstance(exc, AccessDenied)
            self._metrics.logins.labels(result="forbidden" if forbidden else "failed").inc()
            event = "login.forbidden" if forbidden else "login.failed"
            log.warning(event, reason=exc.reason, detail=exc.detail or None)
            raise
        self._metrics.logins.labels(result="succeeded").inc()
        if replacing is not None:
            ended = await self.sessions.revocation.delete(hash_id(replacing))
            if ended is not None:
                log.info("login.replaced", session=short_hash(ended.id_hash))
        return done

    async def _finish_login(
        self, params: Mapping[str, str], login_id: str | None, browser: Browser
    ) -> LoginFinished:
        state = params.get("state")
        # Taken before anything else is checked: whatever happens next, this state is spent.
        pending = None
        if state and looks_like_id(state) and login_id:
            try:
                pending = await self._pending.take(hash_id(state), hash_id(login_id), self.now())
            except SealError as exc:
                raise Misconfigured(
                    "callback.pending_login_unreadable",
                    "the login was started by a relay with another session.secret: every "
                    "replica needs the same session.secret (and previous_secrets)",
                ) from exc
        if "error" in params:
            raise _provider_error(params["error"])
        if not state:
            raise BadRequest("callback.missing_state")
        if login_id is None:
            raise BadRequest("callback.missing_login_cookie")
        if pending is None:
            raise await self._replaced(state) or BadRequest("callback.unknown_state")
        # The provider the login went to, whatever the response claims (a mix-up defence).
        provider = self.providers.for_issuer(pending.provider)
        if provider is None:
            raise BadRequest("callback.provider_gone", "the login's provider left the config")
        metadata = await provider.discovery.get()
        # RFC 9207 §2.4: an iss parameter, when present, must be our issuer exactly; when the
        # provider says it always sends one, a response without it is refused.
        if "iss" in params:
            if params["iss"] != metadata.issuer and not provider.issues(params["iss"]):
                raise BadRequest("callback.iss_mismatch")
        elif metadata.iss_parameter_supported and provider.config.require_iss_parameter:
            raise BadRequest("callback.iss_missing")
        code = params.get("code")
        if not code:
            raise BadRequest("callback.missing_code")
        tokens = await exchange_code(
            self._http,
            metadata=metadata,
            provider=provider.config,
            redirect_uri=self.config.server.redirect_uri,
            code=code,
            code_verifier=pending.code_verifier,
        )
        claims = await self._claims(provider, metadata, tokens, pending)
        kept = identity(claims)
        refused = self._access.refusal(kept)
        if refused is not None:
            # Signed in at the provider, but not allowed here: no session is stored.
            sign_out = self.config.server.public_url + "/logout"
            raise AccessDenied(refused.reason, refused.message, refused.detail, sign_out)
        session_id = new_id()
        sid = claims.get("sid")
        session = await self.sessions.create(
            hash_id(session_id),
            claims["sub"],
            kept,
            Tokens(tokens.id_token, tokens.access_token, tokens.refresh_token, tokens.expires_in),
            self.now(),
            sid=sid if isinstance(sid, str) and len(sid) <= 255 else None,
            # The token's own issuer: a multi-tenant provider's names the tenant.
            sign_in=recorded(browser, claims, claims["iss"], self.config.session.record_address),
        )
        log.info("login.succeeded", session=short_hash(session.id_hash), subject=session.subject)
        return LoginFinished(
            session_id=session_id,
            return_to=self.return_url(pending.return_to),
            # The cookie lives as long as the session can; idleness is judged by the server,
            # so an active user is not logged out when a first idle window would have ended.
            max_age=self.config.session.absolute_lifetime,
        )

    async def _replaced(self, state: str) -> BadRequest | None:
        """The refusal for a state this browser started whose login a newer /login in the same
        browser replaced (its cookie now binds the newer one): a page that links to a new
        login to the same return URL. A link, not a redirect: two tabs each restarting on
        the other's callback would replace each other's logins for as long as they raced."""
        if not looks_like_id(state):
            return None
        return_to = await self._pending.return_to(hash_id(state), self.now())
        if return_to is None:
            return None
        again = "login?" + urlencode({"rd": self.return_url(return_to)})
        return BadRequest(
            "callback.login_replaced",
            public_message="This sign-in was replaced by a newer one started in this browser "
            "(in another tab or window).",
            start_again=again,
        )

    async def _claims(
        self,
        provider: Provider,
        metadata: ProviderMetadata,
        tokens: TokenResponse,
        pending: PendingLogin,
    ) -> dict[str, Any]:
        """The validated ID token's claims, with userinfo's where the token is silent."""
        expect = expectations(metadata, provider.config, self.now(), pending.nonce)
        # A step-up asked for more than the config: the token is held to that too.
        ages = [a for a in (expect.max_age, pending.asked_max_age) if a is not None]
        expect = replace(expect, acr_values=pending.asked_acr, max_age=min(ages) if ages else None)
        claims = await validate_id_token(tokens.id_token, provider.jwks, expect)
        if provider.config.fetch_userinfo and metadata.userinfo_endpoint and tokens.access_token:
            info = await fetch_userinfo(self._http, metadata.userinfo_endpoint, tokens.access_token)
            # OIDC Core §5.3.2: a userinfo sub that differs from the ID token's is not used;
            # the login it belongs to is not trusted either.
            if info.get("sub") != claims["sub"]:
                raise BadRequest("userinfo.sub_mismatch")
            claims = info | claims  # the signed ID token wins where both speak
        return claims

    async def backchannel_logout(self, logout_token: str | None) -> int:
        """Back-Channel Logout 1.0: the provider says a session ended; end ours. Returns how
        many relay sessions ended. Each token is accepted once, on whichever replica."""
        try:
            if not logout_token:
                raise BadRequest("logout_token.missing")
            # Routed by the issuer it claims; validated against that provider's keys and
            # client only (a token claiming another issuer fails its iss check there).
            found = self.providers.for_issuer(unverified_claims(logout_token).get("iss") or "")
            if found is None:
                raise BadRequest("logout_token.unknown_issuer")
            provider = found.config
            metadata = await found.discovery.get()
            expect = expectations(metadata, provider, self.now(), None)
            token = await validate_logout_token(
                logout_token, found.jwks, expect, max_age=provider.logout_token_max_age
            )
            # Kept while the token could still pass the age check, with the clock skew.
            keep_until = token.iat + provider.logout_token_max_age + provider.clock_skew + 1
            ended = await self.sessions.revocation.end_by_logout_token(
                hash_id(token.jti), keep_until, token.sub, token.sid
            )
            if ended is None:
                raise BadRequest("logout_token.replayed")
        except RelayError as exc:
            log.warning("backchannel_logout.refused", reason=exc.reason, detail=exc.detail or None)
            raise
        log.info(
            "backchannel_logout", subject=token.sub, sid_given=token.sid is not None, ended=ended
        )
        return ended

    async def logout(self, session_id: str | None) -> str:
        """End the session, if any; return where to send the browser next."""
        id_token = None
        provider = self.providers.default
        if session_id is not None:
            id_hash = hash_id(session_id)
            ended = await self.sessions.revocation.delete(id_hash)
            log.info("logout", session=short_hash(id_hash), found=ended is not None)
            if ended is not None:
                id_token = ended.id_token
                provider = self.providers.of_id_token(id_token) or provider
                await self.providers.revoke_grants([ended])
        # Unless configured otherwise, the browser ends on the relay's own page, which says
        # "You are signed out" (endpoints/session.py home): landing on an app would only send
        # it straight to the provider's sign-in form, without a word.
        after = provider.config.post_logout_redirect_url
        signed_out = self.config.server.public_url + "/"
        try:
            metadata = await provider.discovery.get()
        except RelayError:
            # The local session is gone; the provider's can wait.
            return after or f"{signed_out}?state={SIGNED_OUT}"
        if metadata.end_session_endpoint is None:
            return after or f"{signed_out}?state={SIGNED_OUT}"
        # RP-Initiated Logout 1.0 §2; the provider hands state back to the page (§3).
        query: dict[str, str] = {"client_id": provider.config.client_id}
        if id_token:
            query["id_token_hint"] = id_token
        query["post_logout_redirect_uri"] = after or signed_out
        if not after:
            query["state"] = SIGNED_OUT
        separator = "&" if "?" in metadata.end_session_endpoint else "?"
        return metadata.end_session_endpoint + separator + urlencode(query)


def _provider_error(code: str) -> BadRequest:
    # OIDC Core §3.1.2.6: the provider said no. Show the code when it is a plain token;
    # error_description is the provider's free text and is never echoed.
    shown = code if _ERROR_CODE.match(code) else "unknown_error"
    return BadRequest(
        "callback.provider_error",
        shown,
        public_message=f"The identity provider refused the sign-in ({shown}).",
    )
