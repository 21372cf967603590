"""The app factory: routes, the middleware, and the resources a worker owns.

`create_app` builds the aiohttp application for one worker. Each resource has a
cleanup context of its own, in the order they depend on each other: the catalog
cache (which the pool tells of changes), the database pool, the catalog searches'
pool, the standby's pools and monitor (with DATABASE_READ_URL), the payment
provider, the liveness lock, the password hasher, the actors' scheduler, the order
actors, the shared Context, the webhook deliverer, the periodic jobs. aiohttp
starts them in that order and stops them in reverse, after in-flight requests have
finished (so queued order commands finish before the scheduler, the provider, the
liveness lock and the pool close).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import cast

import aiojobs
import asyncpg
from aiohttp import web
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import Tracer

from db import idempotency, maintenance, password_resets, provider_events, rate_limits, sessions
from db.pool import Database, SessionWatcher, create_database
from handlers import api, openapi
from handlers.routing import CONTEXT, register
from server.domain import catalog, discounts, orders, users, webhooks
from server.domain.auth import Passwords, Tokens
from server.domain.catalog_cache import CatalogCache, CatalogWatch, FreshReadLimit
from server.domain.context import Context
from server.domain.cursors import CursorCodec
from server.domain.order_actors import OrderSupervisor, Supervisor
from server.domain.payments import refunds
from server.domain.payments import service as payments
from server.domain.payments.provider import PaymentProvider
from server.domain.token_checks import TokenChecks
from server.gateways.simulated_provider import SimulatedProvider
from server.gateways.stripe_provider import StripeProvider
from server.gateways.webhook_sender import HttpSender
from server.runtime.config import Config, pool_settings
from server.runtime.jsonio import dumps
from server.runtime.liveness import Liveness
from server.runtime.metrics import Metrics
from server.runtime.middleware import make_middleware
from server.runtime.periodic import Periodic
from server.runtime.standby import Coverage, ReadTarget, Standby
from server.runtime.tracing import TracedCalls, Tracing
from server.runtime.tracing import start as start_tracing

log = logging.getLogger(__name__)

_GAUGE_REFRESH_SECONDS = 5.0
_PURGE_SECONDS = 3600.0
_STATISTICS_SECONDS = 5.0
_STANDBY_ACQUIRE_SECONDS = 1.0
_STANDBY_COMMAND_SECONDS = 2.0

_CATALOG_CACHE: web.AppKey[CatalogCache] = web.AppKey("catalog_cache", CatalogCache)
_DATABASE: web.AppKey[Database] = web.AppKey("database", Database)
_CATALOG_DATABASE: web.AppKey[Database] = web.AppKey("catalog_database", Database)
_STANDBY: web.AppKey[Standby | None] = web.AppKey("standby")
_PROVIDER: web.AppKey[PaymentProvider] = web.AppKey("provider", PaymentProvider)
_LIVENESS: web.AppKey[Liveness] = web.AppKey("liveness", Liveness)
_PASSWORDS: web.AppKey[Passwords] = web.AppKey("passwords", Passwords)
_SCHEDULER: web.AppKey[aiojobs.Scheduler] = web.AppKey("scheduler", aiojobs.Scheduler)
_SUPERVISOR: web.AppKey[OrderSupervisor] = web.AppKey("supervisor", OrderSupervisor)
_DELIVERER: web.AppKey[webhooks.Deliverer] = web.AppKey("deliverer", webhooks.Deliverer)
_EVENT_COMMITS: web.AppKey[webhooks.EventCommits] = web.AppKey("event_commits", webhooks.EventCommits)

Resource = Callable[[web.Application], AsyncIterator[None]]


@dataclasses.dataclass(frozen=True)
class Options:
    """What a process decides for its app beyond the configuration."""

    dsn: str
    jwt_secret: str
    ensure_admin: bool = True
    # Where spans go: None takes the OTEL_* environment (and no tracing without it);
    # tests pass an in-memory exporter's processor.
    span_processor: SpanProcessor | None = None


def resolve_jwt_secret(config: Config) -> str:
    if config.jwt_secret:
        return config.jwt_secret
    log.warning(
        "JWT_SECRET is not set: using a random secret. Tokens stop working when the process restarts and "
        "are not shared between processes. Development only: set JWT_SECRET in production."
    )
    return secrets.token_urlsafe(32)


def create_app(config: Config, options: Options) -> web.Application:
    metrics = Metrics()
    tracing = start_tracing(options.span_processor)
    tracer = tracing.tracer if tracing is not None else None
    app = web.Application(
        middlewares=[make_middleware(config, metrics, tracing)], client_max_size=config.max_body_bytes
    )
    register(app, api.ROUTES)
    app[openapi.OPENAPI_DOCUMENT] = dumps(openapi.build_document(api.ROUTES, config.metrics_token is not None))
    if tracing is not None:
        app.cleanup_ctx.append(_tracing(tracing))  # first in, last out: flushes the shutdown's spans
    app.cleanup_ctx.extend(
        [
            _catalog_cache(config, options, metrics),
            _database(config, options, metrics, tracer),
            _catalog_database(config, options),
            _standby(config, options, metrics),
            _provider(config, options, metrics),
            _liveness(config, options),
            _passwords(config),
            _scheduler(config),
            _actors(config, metrics, tracer),
            _context(config, options, metrics, tracer),
            _webhooks(config, metrics, tracer),
            _periodic_jobs,
        ]
    )
    return app


def _tracing(tracing: Tracing) -> Resource:
    async def spans(app: web.Application) -> AsyncIterator[None]:
        yield
        tracing.close()

    return spans


def _catalog_cache(config: Config, options: Options, metrics: Metrics) -> Resource:
    """The cache of catalog representations and the watch that keeps it fresh (it
    polls on a connection of its own, so it starts before the pool and stops after)."""

    async def catalog_cache(app: web.Application) -> AsyncIterator[None]:
        cache = CatalogCache(config.catalog_cache_max_bytes, metrics)
        watch = CatalogWatch(cache, options.dsn, config.catalog_changes_poll_seconds, config.db_connect_timeout)
        if cache.enabled:
            watch.start()
        app[_CATALOG_CACHE] = cache
        yield
        await watch.stop()

    return catalog_cache


def _database(config: Config, options: Options, metrics: Metrics, tracer: Tracer | None) -> Resource:
    async def database(app: web.Application) -> AsyncIterator[None]:
        cache = app[_CATALOG_CACHE]
        # The pool tells the cache of the changes its own sessions make (at once; with
        # a standby the cache's record of when they were made also keeps reads of them
        # off the standby until it has them), and the webhook deliverer of the events
        # they commit.
        event_commits = webhooks.EventCommits()
        watchers = (cache, event_commits) if cache.enabled or config.database_read_url is not None else (event_commits,)
        db = await create_database(pool_settings(config, options.dsn), watcher=_Watchers(watchers))
        db.on_wait = metrics.pool_wait.observe
        if tracer is not None:
            db.trace_with(tracer)
        app[_DATABASE] = db
        app[_EVENT_COMMITS] = event_commits
        yield
        await db.close(timeout=config.shutdown_grace_seconds)

    return database


class _Watchers:
    """Several watchers of the pool's sessions as the one it takes."""

    def __init__(self, watchers: tuple[SessionWatcher, ...]) -> None:
        self._watchers = watchers

    def notice(self, conn: object, message: asyncpg.PostgresLogMessage) -> None:
        for watcher in self._watchers:
            watcher.notice(conn, message)

    def released(self, conn: object) -> None:
        for watcher in self._watchers:
            watcher.released(conn)


def _catalog_database(config: Config, options: Options) -> Resource:
    """Filtered catalog lists (searches) get a few connections of their own, so that
    however many arrive they cannot take the connections every other request needs."""

    async def catalog_database(app: web.Application) -> AsyncIterator[None]:
        settings = dataclasses.replace(
            pool_settings(config, options.dsn), min_size=0, max_size=config.catalog_search_connections
        )
        db = await create_database(settings)
        app[_CATALOG_DATABASE] = db
        yield
        await db.close(timeout=config.shutdown_grace_seconds)

    return catalog_database


def _standby(config: Config, options: Options, metrics: Metrics) -> Resource:
    """The standby's pools, sized like the primary's but opened only when used (the
    service starts, and serves from the primary, while the standby is down), and the
    monitor that measures its lag."""

    async def standby(app: web.Application) -> AsyncIterator[None]:
        if config.database_read_url is None:
            app[_STANDBY] = None
            yield
            return
        # A standby that does not answer soon is given up for the primary: its pools
        # wait at most 1 s for a connection and 2 s for a statement.
        settings = dataclasses.replace(
            pool_settings(config, config.database_read_url),
            min_size=0,
            acquire_timeout=min(config.db_pool_acquire_timeout, _STANDBY_ACQUIRE_SECONDS),
            command_timeout=min(config.db_command_timeout, _STANDBY_COMMAND_SECONDS),
            # Not shed: a read the standby cannot take soon fails over to the primary
            # (which sheds), and would otherwise count as losing the standby.
            shed_after=0.0,
        )
        replica = Standby(
            await create_database(settings),
            await create_database(dataclasses.replace(settings, max_size=config.catalog_search_connections)),
            Coverage(),
            metrics,
            config.database_read_max_lag_seconds,
        )
        # The primary is sampled on a direct connection where there is one: through
        # PgBouncer's queue a busy moment would look like standby lag.
        primary = config.liveness_database_url or options.dsn
        replica.start(primary, config.database_read_url, config.db_connect_timeout)
        app[_STANDBY] = replica
        yield
        await replica.close(config.shutdown_grace_seconds)

    return standby


def _provider(config: Config, options: Options, metrics: Metrics) -> Resource:
    async def provider(app: web.Application) -> AsyncIterator[None]:
        gateway: PaymentProvider
        if config.payment_provider == "stripe":
            assert config.stripe_api_key is not None
            assert config.stripe_webhook_secret is not None
            gateway = StripeProvider(
                api_key=config.stripe_api_key,
                webhook_secret=config.stripe_webhook_secret,
                api_base=config.stripe_api_base,
                timeout=config.payment_provider_timeout_ms / 1000,
                record=lambda operation, outcome: metrics.provider_calls.labels("stripe", operation, outcome).inc(),
            )
        else:
            # The simulated gateway keeps its ledger through a pool of its own, as a
            # real gateway keeps its own records.
            ledger = await create_database(
                dataclasses.replace(pool_settings(config, options.dsn), min_size=0, max_size=4)
            )
            gateway = SimulatedProvider(
                ledger,
                latency_ms=config.payment_provider_latency_ms,
                fault=config.payment_provider_fault,
                fault_rate=config.payment_provider_fault_rate,
            )
        app[_PROVIDER] = gateway
        yield
        await gateway.close()

    return provider


def _liveness(config: Config, options: Options) -> Resource:
    """This process's liveness lock, on a session of its own. Released after the
    actors have drained (reverse order), so work still in flight keeps its owner."""

    async def liveness(app: web.Application) -> AsyncIterator[None]:
        lock = Liveness(config.liveness_database_url or options.dsn, config.db_connect_timeout)
        await lock.start()
        app[_LIVENESS] = lock
        yield
        await lock.close()

    return liveness


def _passwords(config: Config) -> Resource:
    async def passwords(app: web.Application) -> AsyncIterator[None]:
        hasher = Passwords(
            config.password_hash_time_cost,
            config.password_hash_memory_kib,
            config.password_hash_parallelism,
            max_queued=config.password_hash_max_queued,
        )
        app[_PASSWORDS] = hasher
        yield
        hasher.close()

    return passwords


def _scheduler(config: Config) -> Resource:
    async def scheduler(app: web.Application) -> AsyncIterator[None]:
        jobs = aiojobs.Scheduler(limit=None, close_timeout=config.shutdown_grace_seconds)
        app[_SCHEDULER] = jobs
        yield
        await jobs.close()  # already closed when the actors drained; this covers a failed start

    return scheduler


def _actors(config: Config, metrics: Metrics, tracer: Tracer | None) -> Resource:
    async def actors(app: web.Application) -> AsyncIterator[None]:
        supervisor = OrderSupervisor(
            scheduler=app[_SCHEDULER],
            metrics=metrics,
            expire=functools.partial(orders.expire, app[_DATABASE], metrics),
            max_live=config.actor_max_live,
            mailbox_size=config.actor_mailbox_size,
            idle_seconds=config.actor_idle_seconds,
            max_per_user=config.max_commands_per_user,
            queue_timeout=config.actor_queue_timeout_seconds,
            tracer=tracer,
        )
        app[_SUPERVISOR] = supervisor
        yield
        await supervisor.drain(config.shutdown_grace_seconds)

    return actors


def _context(config: Config, options: Options, metrics: Metrics, tracer: Tracer | None) -> Resource:
    async def context(app: web.Application) -> AsyncIterator[None]:
        primary_reads = ReadTarget(app[_DATABASE], app[_CATALOG_DATABASE])
        ctx = Context(
            config=config,
            db=app[_DATABASE],
            primary_reads=primary_reads,
            standby=app[_STANDBY],
            passwords=app[_PASSWORDS],
            tokens=Tokens(options.jwt_secret, config.jwt_ttl_seconds),
            cursors=CursorCodec(options.jwt_secret),
            metrics=metrics,
            supervisor=app[_SUPERVISOR],
            provider=app[_PROVIDER] if tracer is None else _traced(app[_PROVIDER], tracer),
            catalog=app[_CATALOG_CACHE],
            liveness=app[_LIVENESS],
            fresh_reads=FreshReadLimit(config.catalog_fresh_reads_per_ip),
            order_batches=orders.batches(app[_DATABASE], config, metrics),
            product_reads=catalog.product_reads(primary_reads, metrics, config),
            token_checks=TokenChecks(app[_DATABASE], metrics.token_check_batch_size.observe),
        )
        app[CONTEXT] = ctx
        if options.ensure_admin and config.admin_email and config.admin_password:
            await users.ensure_admin(ctx, config.admin_email, config.admin_password)
        yield
        await ctx.order_batches.close()  # before the pool: the batches under way commit
        await ctx.product_reads.close()
        await ctx.token_checks.close()

    return context


def _traced(provider: PaymentProvider, tracer: Tracer) -> PaymentProvider:
    """The provider with a client span around each of its calls."""
    return cast(PaymentProvider, TracedCalls(provider, tracer, "payment_provider"))


def _webhooks(config: Config, metrics: Metrics, tracer: Tracer | None) -> Resource:
    async def deliveries(app: web.Application) -> AsyncIterator[None]:
        deliverer = webhooks.Deliverer(
            app[CONTEXT],
            Supervisor[webhooks.QueueKey](
                scheduler=aiojobs.Scheduler(limit=None, close_timeout=config.shutdown_grace_seconds),
                metrics=metrics,
                max_live=config.actor_max_live,
                mailbox_size=config.webhook_max_in_flight,
                idle_seconds=config.actor_idle_seconds,
                kind="webhook",
            ),
            HttpSender(config),
            app[_EVENT_COMMITS].wake,
            tracer=tracer,
        )
        app[_DELIVERER] = deliverer
        yield
        await deliverer.close(config.shutdown_grace_seconds)

    return deliveries


async def _periodic_jobs(app: web.Application) -> AsyncIterator[None]:
    jobs = Periodic()
    _start_jobs(jobs, app[CONTEXT], app[_DELIVERER])
    yield
    await jobs.stop()


def _start_jobs(jobs: Periodic, ctx: Context, deliverer: webhooks.Deliverer) -> None:
    config = ctx.config

    async def sweep() -> None:
        await orders.sweep_expired(ctx)

    async def reconcile() -> None:
        await asyncio.gather(payments.reconcile(ctx), refunds.reconcile(ctx))

    async def purge_idempotency_keys() -> None:
        purged = await idempotency.purge(ctx.db, config.idempotency_key_ttl_seconds)
        if purged:
            log.info("idempotency keys purged", extra={"count": purged})

    async def purge_rate_limits() -> None:
        windows = (config.login_throttle_window_seconds, users.REGISTER_WINDOW_SECONDS, discounts.GUESS_WINDOW_SECONDS)
        await rate_limits.purge(ctx.db, max(windows))

    async def purge_sessions() -> None:
        ended, resets = await sessions.purge(ctx.db), await password_resets.purge(ctx.db)
        if ended or resets:
            log.info("ended sessions and expired reset tokens purged", extra={"sessions": ended, "resets": resets})

    async def refresh_gauges() -> None:
        ctx.refresh_gauges()

    async def refresh_webhook_gauges() -> None:
        await webhooks.refresh_gauges(ctx, deliverer)

    async def purge_events() -> None:
        purged = await webhooks.purge(ctx)
        if purged:
            log.info("delivered events and delivery logs purged", extra={"count": purged})
        # The provider redelivers for days (Stripe: up to 3); its event ids are kept as
        # long as our own events.
        await provider_events.purge(ctx.db, config.webhook_retention_seconds)

    async def refresh_statistics() -> None:
        analyzed = await maintenance.analyze_grown_tables(ctx.db)
        if analyzed:
            log.info("planner statistics refreshed", extra={"tables": analyzed})

    jobs.every(config.order_sweep_interval_seconds, sweep, name="order-sweeper", at_start=True)
    jobs.every(config.payment_reconcile_interval_seconds, reconcile, name="payment-reconciler", at_start=True)
    jobs.every(config.idempotency_purge_interval_seconds, purge_idempotency_keys, name="idempotency-purge")
    jobs.every(_PURGE_SECONDS, purge_rate_limits, name="rate-limits-purge")
    jobs.every(_PURGE_SECONDS, purge_sessions, name="sessions-purge")
    jobs.every(_GAUGE_REFRESH_SECONDS, refresh_gauges, name="gauges")
    jobs.every(_STATISTICS_SECONDS, refresh_statistics, name="statistics")
    jobs.every(
        config.webhook_poll_interval_seconds,
        deliverer.turn,
        name="webhook-delivery",
        at_start=True,
        wake=deliverer.wake,
    )
    jobs.every(_GAUGE_REFRESH_SECONDS, refresh_webhook_gauges, name="webhook-gauges")
    jobs.every(_PURGE_SECONDS, purge_events, name="event-purge")
