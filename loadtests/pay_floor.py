"""The payment floor: the thinnest server that does a payment's database work, for
telling the service's own cost from the cost of the work itself.

`POST /api/payments` runs exactly what the service's payment runs against the database
and the simulated gateway, through the same code: the owner check, `begin_payment`, the
simulated provider's charge (its two half-latencies and its ledger write), and
`settle_payment` (db/payments.py, server/gateways/simulated_provider.py, the
service's `charge_request` and `record_outcome`), on the service's own pool
(db/pool.py). Nothing else: no authentication (the order's owner pays), no
validation beyond reading two fields, no actor, no idempotency keys, no middleware,
metrics, logging or tracing, no reconciliation. So its rate at a load is
what aiohttp, asyncpg and PostgreSQL make of a payment on this machine, the ceiling the
service's own rate can be read against (as ../shared/bench/floor is for the catalog
reads).

    python3 dev.py tools python -m loadtests.bench --scenarios order_pay \\
        --payment-latency-ms 100 --env BENCH_SERVER=service --env BENCH_SERVER=pay_floor \\
        --rounds 3 --pay-orders 14000

The bench seeds through the service, then serves the measured runs from this floor
(same database, port and CPUs). Settings come from the service's environment
(DATABASE_URL, PORT, DB_POOL_*, PAYMENT_PROVIDER_LATENCY_MS, the decline limits). Not a
way to serve anything: a refusal answers 409 with its code, an unknown order 404, and a
payment whose outcome is lost is left pending.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator

import uvloop
from aiohttp import web

from db import payments as payments_db
from db.pool import Database, create_database
from db.refusals import Refusal
from server.domain.payments.service import charge_request, record_outcome
from server.gateways.simulated_provider import SimulatedProvider
from server.runtime.config import Config, load, pool_settings
from server.runtime.jsonio import json_response, loads

_DB = web.AppKey("db", Database)
_GATEWAY = web.AppKey("gateway", SimulatedProvider)
_CONFIG = web.AppKey("config", Config)
# The payment's lease (how long its own worker may take before a reconciler may): no
# reconciler runs here, so any lease longer than a call does the same work.
_LEASE_SECONDS = 60.0


async def pay(request: web.Request) -> web.Response:
    body = loads(await request.read())
    order_id, token = int(body["order_id"]), str(body["payment_method"]["token"])
    db, gateway, config = request.app[_DB], request.app[_GATEWAY], request.app[_CONFIG]
    order = await payments_db.payable(db, order_id)
    if order is None:
        return json_response({"code": "order_not_found"}, 404)
    try:
        payment = await payments_db.begin(
            db,
            order_id=order_id,
            user_id=order["user_id"],
            amount=None,
            provider=gateway.name,
            provider_key=f"pay_{secrets.token_hex(12)}",
            lease_seconds=_LEASE_SECONDS,
            worker=None,
            max_declines_per_order=config.payment_max_declines_per_order,
            max_declines_per_user=config.payment_max_declines_per_user,
            client_ip=request.remote or "",
            max_declines_per_ip=config.payment_max_declines_per_ip,
            payment_method=token,
        )
    except Refusal as refusal:
        return json_response({"code": refusal.code}, 409)
    assert payment is not None  # only a claimed Idempotency-Key answers None
    result = await gateway.charge(charge_request(payment))
    settled = await record_outcome(db, payment["id"], result)
    assert settled is not None  # nothing else settles payments here
    return json_response(dict(settled), 201)


async def ready(request: web.Request) -> web.Response:
    return json_response({"status": "ready"})


def make_app(config: Config) -> web.Application:
    if not config.database_url:
        raise SystemExit("the payment floor needs DATABASE_URL: a database the service has made and seeded")
    settings = pool_settings(config, config.database_url)
    app = web.Application()
    app[_CONFIG] = config

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[_DB] = await create_database(settings)
        yield
        await app[_DB].close(timeout=config.shutdown_grace_seconds)

    async def gateway(app: web.Application) -> AsyncIterator[None]:
        # The gateway's ledger through a pool of its own, as the service keeps it.
        ledger = await create_database(dataclasses.replace(settings, min_size=0, max_size=4))
        app[_GATEWAY] = SimulatedProvider(ledger, latency_ms=config.payment_provider_latency_ms)
        yield
        await app[_GATEWAY].close()

    app.cleanup_ctx.extend((pool, gateway))
    app.router.add_post("/api/payments", pay)
    app.router.add_get("/readyz", ready)
    app.router.add_get("/healthz", ready)
    return app


def main() -> None:
    config = load()
    web.run_app(
        make_app(config), host=config.host, port=config.port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
