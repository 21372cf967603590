"""What the service promises about its data, checked on the database: the one
checker behind `python -m server check-invariants` and the tests."""

from __future__ import annotations

import asyncpg

from db import discounts as discounts_db
from db import orders as orders_db
from db import payments as payments_db
from db import refunds as refunds_db
from db.pool import Database
from server.domain import order_status

# How long past its expiry a pending order may stay before a settled service counts
# it (the sweeper and the actors' timers need a moment).
_EXPIRY_GRACE_SECONDS = 30.0


async def violations(db: Database, *, settled: bool) -> list[str]:
    """Every broken invariant, one line each; empty when all hold.

    Always: stock received = stock + held by pending orders + sold (refunded orders
    count as sold unless their completing refund restocked them, and then once),
    stock >= 0; the hold counters agree with the pending orders; exactly one charge
    per paid order; refunds never exceed their
    payment, amount_refunded (payment and order) equals the sum of succeeded
    refunds, and the provider refunded exactly what we recorded; every order in a
    known status; every discount's times_redeemed is the number of orders holding
    (pending) or having used it (paid and later), and never above max_redemptions.
    `settled` (the service has had time to finish its work): no payment or refund
    still pending and no order pending long past its expiry.
    """
    problems = [
        f"product {r['id']}: received {r['stock_received']} != stock {r['stock']} + held {r['held']} + sold {r['sold']}"
        for r in await orders_db.stock_violations(
            db, order_status.HOLDS_STOCK, order_status.SOLD, order_status.SOLD_UNLESS_RESTOCKED
        )
    ]
    problems += [
        f"{r['counter']} {r['key']}: kept {r['kept']} != {r['counted']} counted from the pending orders"
        for r in await orders_db.hold_violations(db)
    ]
    problems += await payments_db.charge_violations(db, order_status.SOLD | order_status.SOLD_UNLESS_RESTOCKED)
    problems += await refunds_db.refund_violations(db)
    problems += [
        f"order {r['id']} in status {r['status']}" for r in await orders_db.unknown_statuses(db, order_status.STATUSES)
    ]
    problems += [
        f"discount {r['id']} ({r['code']}): times_redeemed {r['redeemed']} != {r['held']} orders holding "
        f"or having used it, or above max_redemptions {r['max_redemptions']}"
        for r in await discounts_db.redemption_violations(db, sorted(order_status.REDEEMS))
    ]
    problems += [
        f"order {r['id']}: discount {r['discount_id']} does not exist" for r in await discounts_db.unknown_discounts(db)
    ]
    if settled:
        pending = await payments_db.pending_count(db)
        if pending:
            problems.append(f"{pending} payment(s) still pending")
        pending = await refunds_db.pending_count(db)
        if pending:
            problems.append(f"{pending} refund(s) still pending")
        overdue = await orders_db.overdue_count(db, _EXPIRY_GRACE_SECONDS)
        if overdue:
            problems.append(f"{overdue} order(s) pending long past their expiry")
    return problems


async def violations_at(dsn: str, *, settled: bool = False) -> list[str]:
    """`violations` on the database at `dsn`, through a connection of its own: the
    checker as the tests and the drills run it from outside a service."""
    db = Database(await asyncpg.create_pool(dsn, min_size=1, max_size=1), 10)
    try:
        return await violations(db, settled=settled)
    finally:
        await db.close(10)
