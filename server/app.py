"""The app factory: routes, the middleware, and the resources a worker owns.

`create_app` builds the aiohttp application for one worker. Its cleanup context
owns the database pool, the order supervisor and the periodic jobs: they start with
the app and stop, in reverse order, when it is cleaned up, after in-flight requests
have finished (so queued order commands finish before the pool closes).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiojobs
from aiohttp import web

from db import idempotency, login_failures, maintenance
from db.pool import create_database
from handlers import api, openapi
from handlers.routing import register
from server.domain import orders, users
from server.domain.auth import Passwords, Tokens
from server.domain.context import CONTEXT, Context
from server.domain.cursors import CursorCodec
from server.domain.order_actors import OrderSupervisor
from server.domain.payments import refunds
from server.domain.payments import service as payments
from server.domain.payments.simulated import SimulatedProvider
from server.runtime.config import Config, pool_settings
from server.runtime.jsonio import dumps
from server.runtime.liveness import Liveness
from server.runtime.metrics import Metrics
from server.runtime.middleware import make_middleware
from server.runtime.periodic import Periodic

log = logging.getLogger(__name__)

_GAUGE_REFRESH_SECONDS = 5.0
_PURGE_SECONDS = 3600.0
_STATISTICS_SECONDS = 5.0


@dataclass(frozen=True)
class Options:
    """What a process decides for its app beyond the configuration."""

    dsn: str
    jwt_secret: str
    ensure_admin: bool = True
    background_jobs: bool = True


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
    app = web.Application(middlewares=[make_middleware(config, metrics)], client_max_size=config.max_body_bytes)
    register(app, api.ROUTES)
    app[openapi.OPENAPI_DOCUMENT] = dumps(openapi.build_document(api.ROUTES))
    app.cleanup_ctx.append(_worker_resources(config, options, metrics))
    return app


def _worker_resources(
    config: Config, options: Options, metrics: Metrics
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def resources(app: web.Application) -> AsyncIterator[None]:
        db = await create_database(pool_settings(config, options.dsn))
        db.on_wait = metrics.pool_wait.observe
        # The simulated gateway keeps its ledger through a pool of its own, as a real
        # gateway keeps its own records.
        provider_db = await create_database(
            dataclasses.replace(pool_settings(config, options.dsn), min_size=0, max_size=4)
        )
        provider = SimulatedProvider(
            provider_db,
            latency_ms=config.payment_provider_latency_ms,
            fault=config.payment_provider_fault,
            fault_rate=config.payment_provider_fault_rate,
        )
        passwords = Passwords(
            config.password_hash_time_cost, config.password_hash_memory_kib, config.password_hash_parallelism
        )
        liveness = Liveness(config.liveness_database_url or options.dsn, config.db_connect_timeout)
        await liveness.start()
        scheduler = aiojobs.Scheduler(limit=None, close_timeout=config.shutdown_grace_seconds)
        ctx = Context(
            config=config,
            db=db,
            passwords=passwords,
            tokens=Tokens(options.jwt_secret, config.jwt_ttl_seconds),
            cursors=CursorCodec(options.jwt_secret),
            metrics=metrics,
            supervisor=OrderSupervisor(
                scheduler=scheduler,
                metrics=metrics,
                expire=lambda order_id: orders.expire(ctx, order_id),
                max_live=config.actor_max_live,
                mailbox_size=config.actor_mailbox_size,
                idle_seconds=config.actor_idle_seconds,
            ),
            provider=provider,
            liveness=liveness,
        )
        app[CONTEXT] = ctx
        if options.ensure_admin and config.admin_email and config.admin_password:
            await users.ensure_admin(ctx, config.admin_email, config.admin_password)
        jobs = Periodic()
        if options.background_jobs:
            _start_jobs(jobs, ctx)
        try:
            yield
        finally:
            await jobs.stop()
            await ctx.supervisor.drain(config.shutdown_grace_seconds)
            await provider.close()
            await liveness.close()
            await db.close(timeout=config.shutdown_grace_seconds)
            passwords.close()

    return resources


def _start_jobs(jobs: Periodic, ctx: Context) -> None:
    config = ctx.config

    async def sweep() -> None:
        await orders.sweep_expired(ctx)

    async def reconcile() -> None:
        await payments.reconcile(ctx)
        await refunds.reconcile(ctx)

    async def purge_idempotency_keys() -> None:
        purged = await idempotency.purge(ctx.db, config.idempotency_key_ttl_seconds)
        if purged:
            log.info("idempotency keys purged", extra={"count": purged})

    async def purge_login_failures() -> None:
        await login_failures.purge(ctx.db, config.login_throttle_window_seconds)

    async def refresh_gauges() -> None:
        ctx.refresh_gauges()

    async def refresh_statistics() -> None:
        analyzed = await maintenance.analyze_grown_tables(ctx.db)
        if analyzed:
            log.info("planner statistics refreshed", extra={"tables": analyzed})

    jobs.every(config.order_sweep_interval_seconds, sweep, name="order-sweeper", at_start=True)
    jobs.every(config.payment_reconcile_interval_seconds, reconcile, name="payment-reconciler", at_start=True)
    jobs.every(config.idempotency_purge_interval_seconds, purge_idempotency_keys, name="idempotency-purge")
    jobs.every(_PURGE_SECONDS, purge_login_failures, name="login-failures-purge")
    jobs.every(_GAUGE_REFRESH_SECONDS, refresh_gauges, name="gauges")
    jobs.every(_STATISTICS_SECONDS, refresh_statistics, name="statistics")
