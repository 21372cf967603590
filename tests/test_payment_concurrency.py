"""Exactly-once charges across real server processes, and after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter

import aiohttp
import asyncpg
import pytest

from tests.helpers import Api, ServerProcess, invariant_violations, session
from tests.stripe_standin import Gateway, both_providers  # noqa: F401 (runs every test with both providers)


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"PAYMENT_PROVIDER_LATENCY_MS": "200", "ACTOR_MAILBOX_SIZE": "64"}


async def test_30_simultaneous_payments_for_one_order_on_two_processes_charge_once(
    gateway: Gateway, apis: list[Api], clean_db: str
) -> None:
    user = await apis[0].customer()
    product = await apis[0].product(price=700, stock=10)
    order = (await apis[0].order(user, (product["id"], 1))).json
    replies = await asyncio.gather(*(apis[i % 2].pay(user, order["id"], key=f"key-{i}") for i in range(30)))
    statuses = Counter(r.status for r in replies)
    assert statuses == {201: 1, 409: 29}
    conn = await asyncpg.connect(clean_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'succeeded'") == 1
        assert await gateway.succeeded_charges(conn) == 1
    finally:
        await conn.close()
    assert await gateway.violations(clean_db) == []


async def test_one_request_repeated_10_times_at_once_with_one_key_charges_once(
    gateway: Gateway, apis: list[Api], clean_db: str
) -> None:
    user = await apis[0].customer()
    product = await apis[0].product(price=990, stock=10)
    order = (await apis[0].order(user, (product["id"], 1))).json
    replies = await asyncio.gather(*(apis[i % 2].pay(user, order["id"], key="same-key") for i in range(10)))
    assert {r.status for r in replies} <= {201, 409}
    succeeded = [r for r in replies if r.status == 201]
    assert succeeded
    assert len({r.json["id"] for r in succeeded}) == 1  # every 201 names the same payment
    conn = await asyncpg.connect(clean_db)
    try:
        assert await gateway.succeeded_charges(conn) == 1
        assert await conn.fetchval("SELECT count(*) FROM payments") == 1
    finally:
        await conn.close()
    replay = await apis[1].pay(user, order["id"], key="same-key")
    assert replay.status == 201
    assert replay.json["id"] == succeeded[0].json["id"]


async def test_payments_in_flight_when_the_process_is_killed_are_settled_after_restart(
    gateway: Gateway, clean_db: str
) -> None:
    env = {
        "PAYMENT_PROVIDER_LATENCY_MS": "1200",
        "PAYMENT_PROVIDER_TIMEOUT_MS": "1000",  # lease: 2 x 1 s + 5 s
        "PAYMENT_RECONCILE_INTERVAL_SECONDS": "0.5",
    }
    if gateway.stripe:
        # The stand-in waits before it acts: some charges are made before the kill, some
        # after it (Stripe goes on with a request whose caller died), some never.
        env["PAYMENT_PROVIDER_LATENCY_MS"] = "600"
    env |= gateway.env(env)
    first = ServerProcess(clean_db, env=env).start()
    gateway.send_events_to(first.url)
    async with session(first.url, connector=aiohttp.TCPConnector(limit=100)) as http:
        api = Api(http)
        users = [await api.customer() for _ in range(4)]
        product = await api.product(price=500, stock=1000)
        orders = [(await api.order(users[i % 4], (product["id"], 1))).json for i in range(24)]

        async def pay(i: int) -> None:
            await asyncio.sleep(i * 0.05)  # spread: some charges are recorded before the kill, some not
            with contextlib.suppress(aiohttp.ClientError):  # the process dies under some
                await api.pay(users[i % 4], orders[i]["id"])

        payments = [asyncio.create_task(pay(i)) for i in range(24)]
        await asyncio.sleep(1.0)
        first.signal(signal.SIGKILL)
        await asyncio.gather(*payments)
    first.wait()

    conn = await asyncpg.connect(clean_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'pending'") > 0
        charged_before_kill = await gateway.succeeded_charges(conn)
        assert charged_before_kill > 0

        second = ServerProcess(clean_db, env=env).start()
        gateway.send_events_to(second.url)
        try:
            for _ in range(200):
                if await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'pending'") == 0:
                    break
                await asyncio.sleep(0.1)
            assert await conn.fetchval("SELECT count(*) FROM payments WHERE status = 'pending'") == 0
        finally:
            second.stop()
        if gateway.stripe:
            # Every PaymentIntent as the ledger says: one succeeded charge per paid order.
            assert await gateway.violations(clean_db) == []
            return
        rows = await conn.fetch(
            """
            SELECT p.status, p.failure_reason, o.status AS order_status, c.status AS charge
            FROM payments p JOIN orders o ON o.id = p.order_id
            LEFT JOIN simulated_provider_charges c ON c.idempotency_key = p.provider_key
            """
        )
        for row in rows:
            if row["charge"] == "succeeded":
                assert (row["status"], row["order_status"]) == ("succeeded", "paid"), dict(row)
            else:
                assert row["status"] == "failed", dict(row)
                assert row["order_status"] == "pending", dict(row)
        per_order = await conn.fetch("SELECT order_id, count(*) FROM payments WHERE status = 'succeeded' GROUP BY 1")
        assert all(r["count"] == 1 for r in per_order)
    finally:
        await conn.close()
    assert await invariant_violations(clean_db) == []
