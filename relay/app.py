"""The app factory. Nothing happens at import time: ``create_app`` builds, the lifespan opens
(engine, HTTP client, pruner) and closes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware

from relay.access import Access
from relay.background import stop_tasks
from relay.bearer import BearerTokens
from relay.config import Config, DatabaseConfig
from relay.cookies import CookiePolicy
from relay.crypto import Sealer
from relay.endpoints import Context, Lifecycle
from relay.endpoints.shortcut import AuthShortcut
from relay.errors import DatabaseUnavailable, RelayError
from relay.flows import Flows
from relay.forwarded import AddressSet
from relay.gate import Gate
from relay.headers import IdentityHeaders
from relay.metrics import Metrics
from relay.middleware import RequestContext
from relay.pages import error_response
from relay.providers import Providers
from relay.pruner import run_pruner
from relay.ratelimit import LoginLimiter
from relay.refresh import Refresher
from relay.routes import InternalPort, RelayApp, routes
from relay.sampler import run_sampler
from relay.store.cache import SessionCache
from relay.store.database import Database, ensure_schema, make_engine
from relay.store.hot import HotStatements
from relay.store.invalidation import Listener
from relay.store.outage import OutageGrace
from relay.store.pending import PendingLogins
from relay.store.records import Lifetimes
from relay.store.sessions import Sessions
from relay.store.sqlite_watch import Watcher
from relay.store.warm import Warmer

log = structlog.get_logger("relay.app")

SHUTDOWN_GRACE = 5.0  # seconds the background tasks get to stop


def create_app(
    config: Config,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
    run_pruner_task: bool = True,
    lifecycle: Lifecycle | None = None,
) -> Starlette:
    metrics = Metrics()
    lifecycle = lifecycle or Lifecycle()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = config.database
        engine = _engine(database)
        db = Database(engine, database.timeout)
        try:
            await ensure_schema(engine)
        except BaseException:
            await db.dispose()
            raise
        http = httpx2.AsyncClient(
            transport=transport,
            timeout=config.provider.timeout,
            follow_redirects=False,
            headers={"User-Agent": "oidc-relay"},
        )
        session = config.session
        sealer = Sealer(
            session.secret.get_secret_value(),
            [s.get_secret_value() for s in session.previous_secrets],
        )
        lifetimes = Lifetimes(
            session.absolute_lifetime, session.idle_timeout, session.touch_interval
        )
        cache = SessionCache(config.cache.max_entries, miss_ttl=config.cache.miss_ttl)
        db.hot = await _open_hot(db, config)
        grace = OutageGrace(config.cache.outage_grace, renew=_renewer(engine, db.hot))
        endings = track_endings(db, database.listen_url or database.url, cache, grace)
        listener = endings if isinstance(endings, Listener) else None
        sessions = Sessions(
            db,
            sealer,
            lifetimes,
            cache,
            refresh_margin=config.refresh.margin if config.refresh.enabled else None,
            grace=grace,
            keep_access_token=(
                config.headers.pass_access_token or config.headers.set_authorization_header
            ),
        )
        providers = Providers(config.login_providers, http, clock)
        # The default provider's: what /readyz and the metrics report (docs/operations.md).
        discovery = providers.default.discovery
        refresher = Refresher(
            config=config,
            http=http,
            providers=providers,
            sessions=sessions,
            metrics=metrics,
            clock=clock,
        )
        access = Access(config.access, shown=config.headers.claims)
        flows = Flows(
            config=config,
            http=http,
            providers=providers,
            pending=PendingLogins(db, sealer),
            sessions=sessions,
            metrics=metrics,
            clock=clock,
            access=access,
        )
        metrics.watch(cache, listener, discovery, grace)
        app.state.engine = engine
        app.state.metrics = metrics
        login_limiter = LoginLimiter(config.limits.login_rate, config.limits.storage_uri)
        app.state.relay = Context(
            config=config,
            flows=flows,
            discovery=discovery,
            db=db,
            sessions=sessions,
            gate=Gate(
                sessions,
                access,
                config.server.public_url + "/logout",
                clock,
                refresher=refresher,
                skew=config.provider.clock_skew,
                bearer=BearerTokens(config, http, providers, clock)
                if config.bearer.enabled
                else None,
            ),
            identity=IdentityHeaders(config.headers, access),
            clock=clock,
            cookies=CookiePolicy.from_config(session),
            proxies=AddressSet.parse(config.server.trusted_proxies),
            login_limiter=login_limiter,
            metrics_readers=AddressSet.parse(config.server.metrics_allowed),
            metrics=metrics,
            listener=listener,
            lifecycle=lifecycle,
        )
        # The relay starts whether or not the provider answers; /readyz tells which.
        tasks = [
            asyncio.create_task(p.discovery.warm_up(), name=f"discovery-warm-up-{p.name}")
            for p in providers.all
        ]
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(
            run_sampler(db, metrics, clock, stop_sampling), name="sampler"
        )
        tasks.append(await start_tracking(endings))
        app.state.warmer, app.state.pruner, housekeeping = _housekeeping(
            config,
            db,
            sessions,
            metrics,
            clock,
            prune=run_pruner_task,
            untrustable=lambda: listener is not None and listener.unproven > 0,
        )
        tasks.extend(housekeeping)
        log.info("relay.started", public_url=config.server.public_url)
        try:
            yield
        finally:
            # The sampler stops at its next pause (see run_sampler), the others are cancelled.
            stop_sampling.set()
            await stop_tasks([sampler], tasks, SHUTDOWN_GRACE)
            await _last_touches(sessions)
            await http.aclose()
            await login_limiter.close()
            await db.dispose()
            log.info("relay.stopped")

    return RelayApp(
        config.server.path_prefix,
        routes=routes(config.server.path_prefix),
        middleware=middleware(config, metrics, lifecycle),
        # Anything else is caught by RequestContext, inside the request's log context.
        exception_handlers={RelayError: error_response},
        lifespan=lifespan,
    )


def _housekeeping(
    config: Config,
    db: Database,
    sessions: Sessions,
    metrics: Metrics,
    clock: Callable[[], float],
    *,
    prune: bool,
    untrustable: Callable[[], bool],
) -> tuple[Warmer | None, asyncio.Task[None] | None, list[asyncio.Task[None]]]:
    """The touches' writer, the cache's warm starts and the pruner, as background tasks."""
    tasks = [asyncio.create_task(sessions.touches.run(), name="touches")]
    warmer = None
    if config.cache.max_entries > 0:
        # A replica starts with an empty cache: fill it from the table in the background once
        # it may be believed, and again after every flush (store/warm.py).
        warmer = Warmer(db, sessions, clock, untrustable=untrustable)
        tasks.append(asyncio.create_task(warmer.run(), name="cache-warmer"))
    pruner = None
    if prune:
        session = config.session
        pruner = asyncio.create_task(
            run_pruner(
                db,
                interval=session.prune_interval,
                batch_size=session.prune_batch_size,
                clock=clock,
                metrics=metrics,
            ),
            name="pruner",
        )
        tasks.append(pruner)
    return warmer, pruner, tasks


async def _last_touches(sessions: Sessions) -> None:
    """Write the touches still queued, so that a deploy does not cut anyone's idle time."""
    queued = sessions.touches.queued
    try:
        async with asyncio.timeout(SHUTDOWN_GRACE):
            await sessions.touches.flush()
    except (DatabaseUnavailable, TimeoutError) as exc:
        log.warning("session.touches_lost", sessions=queued, reason=type(exc).__name__)


def _engine(database: DatabaseConfig) -> AsyncEngine:
    """With PostgreSQL the uncached checks have connections of their own (store/hot.py): the
    engine's serve logins, logouts and refresh leases, two kept open and the rest closed when
    returned, so that a burst leaves no backends behind."""
    kept = min(database.pool_size, 2)
    return make_engine(
        database.url,
        timeout=database.timeout,
        pool_size=kept,
        max_overflow=database.pool_size - kept + database.max_overflow,
        pooled=database.pooled,
    )


async def _open_hot(db: Database, config: Config) -> HotStatements | None:
    """PostgreSQL: the uncached check's lookup and touch, prepared (store/hot.py)."""
    if not db.is_postgres:
        return None
    database = config.database
    hot = HotStatements(
        database.url, timeout=database.timeout, size=database.pool_size, pooled=database.pooled
    )
    await hot.open()
    return hot


def _renewer(engine: AsyncEngine, hot: HotStatements | None) -> Callable[[], Awaitable[None]]:
    """What drops the connections from before an outage: the engine's pool's, the hot
    statements' (store/outage.py, renew)."""

    async def renew() -> None:
        await engine.dispose()
        if hot is not None:
            await hot.renew()

    return renew


def track_endings(
    db: Database, url: str, cache: SessionCache, grace: OutageGrace | None = None
) -> Listener | Watcher:
    """What tells this process's cache of sessions ended by others; the cache is trusted
    only while it does. Only the listener holds the cache for an outage grace: a SQLite
    file has no failover to ride out."""
    if db.is_postgres:
        # Other replicas end sessions too (store/invalidation.py).
        return Listener(url, cache, timeout=db.timeout, grace=grace)
    # So do other processes on the same file, `relay sessions revoke` first of all
    # (store/sqlite_watch.py).
    watcher = Watcher(url, cache, timeout=db.timeout)
    cache.trusted = watcher.trusted
    return watcher


async def start_tracking(endings: Listener | Watcher) -> asyncio.Task[None]:
    if isinstance(endings, Listener):
        return asyncio.create_task(endings.run(), name="invalidation-listener")
    task = asyncio.create_task(endings.run(), name="invalidation-watcher")
    await endings.first_poll()
    return task


def middleware(config: Config, metrics: Metrics, lifecycle: Lifecycle) -> list[Middleware]:
    """Outermost first: request context and access line; the internal port's routes (when
    configured); the forward-auth shortcut, right before routing."""
    prefix = config.server.path_prefix
    stack = [
        Middleware(RequestContext, metrics=metrics, logging=config.logging, lifecycle=lifecycle)
    ]
    if config.server.internal_port is not None:
        stack.append(Middleware(InternalPort, port=config.server.internal_port, prefix=prefix))
    stack.append(Middleware(AuthShortcut, prefix=prefix))
    return stack
