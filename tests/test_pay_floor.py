"""The payment floor (loadtests/pay_floor.py) does a payment's database work for real:
the order it pays is paid, its charge is in the gateway's ledger, and nothing it does
breaks the invariants. So the rate the bench measures on it is the rate of that work."""

from __future__ import annotations

from typing import Any

import asyncpg

from loadtests.pay_floor import make_app
from server.runtime.config import Config
from tests.helpers import Api, invariant_violations


async def _pay(aiohttp_client: Any, config: Config, order_id: int, token: str = "tok_visa") -> Any:
    floor = await aiohttp_client(make_app(config))
    return await floor.post("/api/payments", json={"order_id": order_id, "payment_method": {"token": token}})


async def test_the_floor_pays_an_order_and_its_charge_is_in_the_ledger(
    api: Api, aiohttp_client: Any, config: Config, db: asyncpg.Connection, clean_db: str
) -> None:
    user, product = await api.customer(), await api.product(stock=5)
    order = (await api.order(user, (product["id"], 1))).json
    reply = await _pay(aiohttp_client, config, order["id"])
    assert reply.status == 201
    payment = await reply.json()
    assert payment["status"] == "succeeded"
    assert await db.fetchval("SELECT status FROM orders WHERE id = $1", order["id"]) == "paid"
    charge = await db.fetchval(
        "SELECT status FROM simulated_provider_charges WHERE idempotency_key = $1", payment["provider_key"]
    )
    assert charge == "succeeded"
    assert await invariant_violations(clean_db) == []


async def test_the_floor_refuses_a_paid_order_with_the_services_code(
    api: Api, aiohttp_client: Any, config: Config
) -> None:
    user, product = await api.customer(), await api.product(stock=5)
    order = (await api.order(user, (product["id"], 1))).json
    assert (await _pay(aiohttp_client, config, order["id"])).status == 201
    again = await _pay(aiohttp_client, config, order["id"])
    assert again.status == 409
    assert (await again.json())["code"] == "wrong_status"
