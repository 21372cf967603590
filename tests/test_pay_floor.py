"""The payment floor (loadtests/pay_floor.py) does a payment's database work for real:
the order it pays is paid, its charge is in the gateway's ledger, and nothing it does
breaks the invariants. So the rate the bench measures on it is the rate of that work.
And the bench refuses a floor variant it could not serve as asked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from loadtests.bench import parse, refuse_unservable_floor
from loadtests.pay_floor import make_app
from server.runtime.config import Config
from tests.helpers import Api, invariant_violations


@pytest.fixture
async def floor(aiohttp_client: Any, config: Config) -> Any:
    return await aiohttp_client(make_app(config))


async def _pending_order(api: Api) -> int:
    user, product = await api.customer(), await api.product(stock=5)
    order_id: int = (await api.order(user, (product["id"], 1))).json["id"]
    return order_id


async def _pay(floor: Any, order_id: int) -> Any:
    return await floor.post("/api/payments", json={"order_id": order_id, "payment_method": {"token": "tok_visa"}})


async def test_the_floors_payment_is_a_real_one_order_paid_charge_kept_invariants_clean(
    api: Api, floor: Any, db: asyncpg.Connection, clean_db: str
) -> None:
    order_id = await _pending_order(api)
    reply = await _pay(floor, order_id)
    assert reply.status == 201
    payment = await reply.json()
    assert payment["status"] == "succeeded"
    assert await db.fetchval("SELECT status FROM orders WHERE id = $1", order_id) == "paid"
    charge = await db.fetchval(
        "SELECT status FROM simulated_provider_charges WHERE idempotency_key = $1", payment["provider_key"]
    )
    assert charge == "succeeded"
    assert await invariant_violations(clean_db) == []


async def test_the_floor_refuses_a_paid_order_with_the_services_code(api: Api, floor: Any) -> None:
    order_id = await _pending_order(api)
    assert (await _pay(floor, order_id)).status == 201
    again = await _pay(floor, order_id)
    assert again.status == 409
    assert (await again.json())["code"] == "wrong_status"


@pytest.mark.parametrize(
    ("arguments", "refusal"),
    [
        (["--scenarios", "order_pay,order_create"], "serves order_pay only"),
        (["--workers", "2"], "runs one process"),
        (["--webhooks", "hanging"], "has no webhooks"),
        (["--env", "BENCH_SERVER=pay_floor,PAYMENT_PROVIDER=stripe"], "simulated gateway only"),
        (["--checkout", "/"], "has no loadtests/pay_floor.py"),
        (["--env", "BENCH_SERVER=nothing"], "takes service or pay_floor"),
    ],
)
def test_the_bench_refuses_a_floor_variant_it_cannot_serve(arguments: list[str], refusal: str) -> None:
    argv = ["--scenarios", "order_pay", "--env", "BENCH_SERVER=pay_floor", *arguments]
    with pytest.raises(SystemExit, match=refusal):
        refuse_unservable_floor(parse(argv))


def test_the_bench_takes_a_floor_variant_beside_the_service() -> None:
    argv = ["--scenarios", "order_pay", "--env", "BENCH_SERVER=service", "--env", "BENCH_SERVER=pay_floor"]
    refuse_unservable_floor(parse([*argv, "--checkout", str(Path(__file__).resolve().parent.parent)]))
