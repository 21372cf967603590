"""Money goes back at most once, across real server processes."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import asyncpg
import pytest

from tests.helpers import Api, Reply
from tests.stripe_standin import Gateway, both_providers  # noqa: F401 (runs every test with both providers)


@pytest.fixture
def server_env() -> dict[str, str]:
    """Provider calls slow enough (200 ms) that simultaneous requests overlap."""
    return {"PAYMENT_PROVIDER_LATENCY_MS": "200", "ACTOR_MAILBOX_SIZE": "64"}


async def _paid_payment(api: Api, price: int) -> dict[str, Any]:
    user = await api.customer()
    product = await api.product(price=price, stock=10)
    order = (await api.order(user, (product["id"], 1))).json
    paid = await api.pay(user, order["id"])
    assert paid.status == 201, paid
    payment: dict[str, Any] = paid.json
    return payment


async def _refund(api: Api, payment_id: int, key: str | None = None, **body: Any) -> Reply:
    admin = await api.admin_user()
    headers = {"Idempotency-Key": key} if key else None
    return await api.call("POST", f"/api/payments/{payment_id}/refunds", json=body, token=admin.token, headers=headers)


async def _totals(gateway: Gateway, dsn: str, payment_id: int) -> tuple[int, int, int, int]:
    """(succeeded refunds, their sum, the provider's succeeded refunds, their sum)."""
    conn = await asyncpg.connect(dsn)
    try:
        ours = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(amount), 0) FROM refunds WHERE payment_id = $1 AND status = 'succeeded'",
            payment_id,
        )
        if gateway.stripe:
            made = [r["amount"] for r in gateway.ledger()["refunds"] if r["status"] == "succeeded"]
            theirs = (len(made), sum(made))
        else:
            row = await conn.fetchrow(
                "SELECT count(*), coalesce(sum(amount), 0) FROM simulated_provider_refunds WHERE status = 'succeeded'"
            )
            assert row is not None
            theirs = (row[0], row[1])
        assert ours is not None
        assert theirs is not None
        return ours[0], ours[1], theirs[0], theirs[1]
    finally:
        await conn.close()


async def test_30_simultaneous_full_refunds_on_two_processes_refund_once(
    gateway: Gateway, apis: list[Api], clean_db: str
) -> None:
    payment = await _paid_payment(apis[0], price=4200)
    for api in apis:
        await api.admin_user()  # log in first: the refunds then start together
    replies = await asyncio.gather(*(_refund(apis[i % 2], payment["id"]) for i in range(30)))
    assert Counter(r.status for r in replies) == {201: 1, 409: 29}
    assert await _totals(gateway, clean_db, payment["id"]) == (1, 4200, 1, 4200)
    admin = await apis[1].admin_user()
    order = (await apis[1].call("GET", f"/api/orders/{payment['order_id']}", token=admin.token)).json
    assert (order["status"], order["amount_refunded"]) == ("refunded", 4200)
    assert await gateway.violations(clean_db) == []


async def test_30_simultaneous_partial_refunds_never_exceed_the_payment(
    gateway: Gateway, apis: list[Api], clean_db: str
) -> None:
    payment = await _paid_payment(apis[0], price=10_000)
    for api in apis:
        await api.admin_user()
    amounts = [random.Random(i).randint(300, 800) for i in range(30)]
    assert sum(amounts) > 10_000
    replies = await asyncio.gather(
        *(_refund(apis[i % 2], payment["id"], amount=amount) for i, amount in enumerate(amounts))
    )
    assert {r.status for r in replies} <= {201, 409}, [r for r in replies if r.status not in (201, 409)]
    granted = sum(r.json["amount"] for r in replies if r.status == 201)
    count = sum(1 for r in replies if r.status == 201)
    assert 0 < granted <= 10_000
    assert await _totals(gateway, clean_db, payment["id"]) == (count, granted, count, granted)
    assert await gateway.violations(clean_db) == []


async def test_one_refund_repeated_10_times_at_once_with_one_key_refunds_once(
    gateway: Gateway, apis: list[Api], clean_db: str
) -> None:
    payment = await _paid_payment(apis[0], price=990)
    for api in apis:
        await api.admin_user()
    replies = await asyncio.gather(
        *(_refund(apis[i % 2], payment["id"], key="same-key", amount=500) for i in range(10))
    )
    assert {r.status for r in replies} <= {201, 409}
    succeeded = [r for r in replies if r.status == 201]
    assert succeeded
    assert len({r.json["id"] for r in succeeded}) == 1  # every 201 names the same refund
    assert await _totals(gateway, clean_db, payment["id"]) == (1, 500, 1, 500)
    replay = await _refund(apis[1], payment["id"], key="same-key", amount=500)
    assert (replay.status, replay.json["id"]) == (201, succeeded[0].json["id"])
    assert await gateway.violations(clean_db) == []
