"""Discount codes under a stampede, across two real server processes on one database:
a code's redemption limit and its per-customer limit hold exactly (the contract's
"Checkout"), however the requests interleave. The fault suite repeats each 20 times."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.helpers import Api, ServerProcess, User, invariant_violations, session

# Every repetition of the fault suite's version must come out the same.
REPETITIONS = 20


@pytest.fixture
def server_env() -> dict[str, str]:
    # Many pending orders per customer across repetitions; connections opened at
    # start, so that the stampede meets the lock, not a pool growing on a busy machine.
    return {"DB_POOL_MIN_SIZE": "10", "DB_POOL_MAX_SIZE": "10", "ORDER_MAX_PENDING_PER_USER": "1000"}


@pytest.fixture
async def stampede_apis(two_servers: list[ServerProcess]) -> AsyncIterator[list[Api]]:
    sessions = [session(s.url, connector=aiohttp.TCPConnector(limit=100)) for s in two_servers]
    try:
        yield [Api(http) for http in sessions]
    finally:
        for http in sessions:
            await http.close()


async def _times_redeemed(api: Api, discount: dict[str, Any]) -> int:
    admin = await api.admin_user()
    value: int = (await api.call("GET", f"/api/discounts/{discount['id']}", token=admin.token)).json["times_redeemed"]
    return value


async def _stampede(apis: list[Api], customers: list[User], product_id: int, code: str) -> collections.Counter[int]:
    """Every customer orders with `code` at once, alternating between the processes."""

    async def order(i: int) -> int:
        reply = await apis[i % 2].checkout(customers[i], (product_id, 1), discount_code=code)
        return reply.status

    return collections.Counter(await asyncio.gather(*(order(i) for i in range(len(customers)))))


async def _forty_customers_for_five_redemptions(apis: list[Api], customers: list[User], product_id: int) -> None:
    discount = await apis[0].discount(max_redemptions=5)
    statuses = await _stampede(apis, customers, product_id, discount["code"])
    assert statuses == {201: 5, 409: 35}, statuses
    assert await _times_redeemed(apis[1], discount) == 5


async def _one_customer_ten_times_with_one_per_customer(apis: list[Api], customer: User, product_id: int) -> None:
    discount = await apis[0].discount(max_per_customer=1)
    statuses = await _stampede(apis, [customer] * 10, product_id, discount["code"])
    assert statuses == {201: 1, 409: 9}, statuses
    assert await _times_redeemed(apis[1], discount) == 1


async def test_40_customers_at_once_on_two_processes_get_exactly_the_5_redemptions_left(
    stampede_apis: list[Api], clean_db: str
) -> None:
    apis = stampede_apis
    product = await apis[0].product(stock=10_000)
    customers = [await apis[i % 2].customer() for i in range(40)]
    await _forty_customers_for_five_redemptions(apis, customers, product["id"])
    assert await invariant_violations(clean_db) == []


async def test_one_customer_sending_10_at_once_with_one_per_customer_gets_it_once(
    stampede_apis: list[Api], clean_db: str
) -> None:
    apis = stampede_apis
    product = await apis[0].product(stock=10_000)
    await _one_customer_ten_times_with_one_per_customer(apis, await apis[0].customer(), product["id"])
    assert await invariant_violations(clean_db) == []


async def test_redemptions_given_back_by_cancellation_are_taken_again_exactly(
    stampede_apis: list[Api], clean_db: str
) -> None:
    """Cancellations of holders race new orders: the limit holds at every moment."""
    apis = stampede_apis
    product = await apis[0].product(stock=10_000)
    discount = await apis[0].discount(max_redemptions=5)
    holders = [await apis[i % 2].customer() for i in range(5)]
    held = [
        (await apis[i % 2].checkout(user, (product["id"], 1), discount_code=discount["code"])).json
        for i, user in enumerate(holders)
    ]
    newcomers = [await apis[i % 2].customer() for i in range(20)]

    async def cancel(i: int) -> int:
        path = f"/api/orders/{held[i]['id']}"
        return (await apis[i % 2].call("PUT", path, json={"status": "cancelled"}, token=holders[i].token)).status

    cancels, orders = await asyncio.gather(
        asyncio.gather(*(cancel(i) for i in range(2))), _stampede(apis, newcomers, product["id"], discount["code"])
    )
    assert cancels == [200, 200]
    assert orders[201] <= 2 and orders[201] + orders[409] == 20, orders
    assert await _times_redeemed(apis[0], discount) == 3 + orders[201]
    assert await invariant_violations(clean_db) == []


@pytest.mark.faults
async def test_the_stampedes_come_out_the_same_20_times_in_a_row(stampede_apis: list[Api], clean_db: str) -> None:
    apis = stampede_apis
    product = await apis[0].product(stock=100_000)
    customers = [await apis[i % 2].customer() for i in range(40)]
    for _ in range(REPETITIONS):
        await _forty_customers_for_five_redemptions(apis, customers, product["id"])
        await _one_customer_ten_times_with_one_per_customer(apis, customers[0], product["id"])
    assert await invariant_violations(clean_db) == []
