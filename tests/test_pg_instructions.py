"""The PostgreSQL instructions tool runs what a payment asks of the database: its script,
run on the real schema, pays an order (a stored function whose signature changed would
make the tool's statements fail)."""

from __future__ import annotations

import asyncpg

from loadtests.pg_instructions import payment_script
from tests.helpers import Api


async def test_the_payment_script_pays_an_order(api: Api, db: asyncpg.Connection) -> None:
    user, product = await api.customer(), await api.product(stock=5)
    order = (await api.order(user, (product["id"], 1))).json
    for statement in payment_script([(order["id"], user.id)]).splitlines():
        await db.execute(statement)
    assert await db.fetchval("SELECT status FROM orders WHERE id = $1", order["id"]) == "paid"
    key = f"pay_instructions_{order['id']}"
    assert await db.fetchval("SELECT status FROM payments WHERE provider_key = $1", key) == "succeeded"
    assert await db.fetchval("SELECT status FROM simulated_provider_charges WHERE idempotency_key = $1", key) == (
        "succeeded"
    )
