"""The Refunds section of the contract, through HTTP on a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from handlers.routing import CONTEXT
from server.app import Options, create_app
from tests.conftest import JWT_SECRET, make_config
from tests.helpers import Api, Reply, User, hold_provider, scrape, watch_provider
from tests.stripe_standin import Gateway, both_providers  # noqa: F401 (runs every test with both providers)

REFUND_FIELDS = {
    "id",
    "payment_id",
    "order_id",
    "amount",
    "currency",
    "status",
    "reason",
    "restock",
    "failure_reason",
    "provider_ref",
    "created_at",
}


async def _paid(
    api: Api, *, price: int = 500, quantity: int = 2, stock: int = 10, card: str = "tok_visa"
) -> tuple[User, dict[str, Any], dict[str, Any]]:
    """A customer, their paid order and its payment."""
    user = await api.customer()
    product = await api.product(price=price, stock=stock)
    order = (await api.order(user, (product["id"], quantity))).json
    paid = await api.pay(user, order["id"], card=card)
    assert paid.status == 201, paid
    return user, order, paid.json


async def _refund(api: Api, payment_id: int, key: str | None = None, **body: Any) -> Reply:
    admin = await api.admin_user()
    headers = {"Idempotency-Key": key} if key else None
    return await api.call("POST", f"/api/payments/{payment_id}/refunds", json=body, token=admin.token, headers=headers)


async def _order(api: Api, order_id: int) -> dict[str, Any]:
    admin = await api.admin_user()
    order: dict[str, Any] = (await api.call("GET", f"/api/orders/{order_id}", token=admin.token)).json
    return order


async def _payment(api: Api, payment_id: int) -> dict[str, Any]:
    admin = await api.admin_user()
    payment: dict[str, Any] = (await api.call("GET", f"/api/payments/{payment_id}", token=admin.token)).json
    return payment


async def _provider_refunds(gateway: Gateway, db: asyncpg.Connection) -> list[tuple[int, str]]:
    """(amount, status) of each refund the provider made, smallest first."""
    if gateway.stripe:
        return sorted((r["amount"], r["status"]) for r in gateway.ledger()["refunds"])
    rows = await db.fetch("SELECT amount, status FROM simulated_provider_refunds WHERE status <> 'voided' ORDER BY 1")
    return [(r["amount"], r["status"]) for r in rows]


# --- amounts ---------------------------------------------------------------------------------


async def test_a_refund_without_amount_gives_back_everything_and_the_order_is_refunded(
    gateway: Gateway, api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    _, order, payment = await _paid(api)
    reply = await _refund(api, payment["id"], reason="damaged in transit")
    assert reply.status == 201, reply
    refund = reply.json
    assert set(refund) == REFUND_FIELDS
    assert (refund["amount"], refund["currency"], refund["status"]) == (1000, "USD", "succeeded")
    assert (refund["payment_id"], refund["order_id"]) == (payment["id"], order["id"])
    assert refund["reason"] == "damaged in transit"
    assert refund["provider_ref"] and refund["failure_reason"] is None
    assert (await _payment(api, payment["id"]))["amount_refunded"] == 1000
    after = await _order(api, order["id"])
    assert (after["status"], after["amount_refunded"]) == ("refunded", 1000)
    assert [tuple(r) for r in await _provider_refunds(gateway, db)] == [(1000, "succeeded")]
    assert await gateway.violations(clean_db) == []


async def test_partial_refunds_add_up_and_the_last_one_refunds_the_order(
    gateway: Gateway, api: Api, clean_db: str
) -> None:
    _, order, payment = await _paid(api)
    assert (await _refund(api, payment["id"], amount=300)).json["amount"] == 300
    assert (await _refund(api, payment["id"], amount=200)).json["amount"] == 200
    assert (await _payment(api, payment["id"]))["amount_refunded"] == 500
    middle = await _order(api, order["id"])
    assert (middle["status"], middle["amount_refunded"]) == ("paid", 500)
    rest = await _refund(api, payment["id"])  # the default: what is left
    assert (rest.status, rest.json["amount"]) == (201, 500)
    assert (await _order(api, order["id"]))["status"] == "refunded"
    assert await gateway.violations(clean_db) == []


async def test_a_new_payment_and_order_show_amount_refunded_zero(api: Api) -> None:
    _, order, payment = await _paid(api)
    assert payment["amount_refunded"] == 0
    assert (await _order(api, order["id"]))["amount_refunded"] == 0
    assert order["amount_refunded"] == 0


async def test_more_than_is_left_is_409_and_nothing_is_refunded(
    gateway: Gateway, api: Api, db: asyncpg.Connection
) -> None:
    _, order, payment = await _paid(api)
    assert (await _refund(api, payment["id"], amount=1001)).status == 409
    assert (await _refund(api, payment["id"], amount=600)).status == 201
    reply = await _refund(api, payment["id"], amount=401)
    assert reply.status == 409
    assert reply.content_type == "application/problem+json"
    assert [tuple(r) for r in await _provider_refunds(gateway, db)] == [(600, "succeeded")]
    assert (await _payment(api, payment["id"]))["amount_refunded"] == 600
    assert (await _order(api, order["id"]))["status"] == "paid"


async def test_a_fully_refunded_payment_cannot_be_refunded_again(
    gateway: Gateway, api: Api, db: asyncpg.Connection
) -> None:
    _, _, payment = await _paid(api)
    assert (await _refund(api, payment["id"])).status == 201
    assert (await _refund(api, payment["id"])).status == 409
    assert (await _refund(api, payment["id"], amount=1)).status == 409
    assert len(await _provider_refunds(gateway, db)) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0},
        {"amount": -5},
        {"amount": 1.5},
        {"amount": "100"},
        {"amount": 2**64},
        {"reason": "x" * 501},
        {"reason": 7},
        {"restock": "yes"},
        {"status": "succeeded"},
    ],
)
async def test_invalid_refund_bodies_are_422(
    gateway: Gateway, api: Api, db: asyncpg.Connection, body: dict[str, Any]
) -> None:
    _, _, payment = await _paid(api)
    reply = await _refund(api, payment["id"], **body)
    assert reply.status == 422, reply
    assert await _provider_refunds(gateway, db) == []


async def test_an_amount_written_as_a_whole_number_with_a_fraction_part_is_an_integer(api: Api) -> None:
    # JSON Schema counts 100.0 as an integer, so clients generated from the document may send it.
    _, _, payment = await _paid(api)
    reply = await _refund(api, payment["id"], amount=100.0)
    assert reply.status == 201, reply
    assert reply.json["amount"] == 100


async def test_a_reason_of_500_characters_is_kept(api: Api) -> None:
    _, _, payment = await _paid(api)
    reply = await _refund(api, payment["id"], amount=1, reason="r" * 500)
    assert reply.status == 201
    assert reply.json["reason"] == "r" * 500


async def test_only_a_succeeded_payment_can_be_refunded(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    user = await api.customer()
    product = await api.product(price=500)
    order = (await api.order(user, (product["id"], 1))).json
    declined = await api.pay(user, order["id"], card="tok_chargeDeclined")
    assert declined.status == 402
    assert (await _refund(api, declined.json["id"])).status == 409
    assert await _provider_refunds(gateway, db) == []


async def test_refunding_an_unknown_payment_is_404(api: Api) -> None:
    assert (await _refund(api, 999999)).status == 404


async def test_a_refund_of_an_unknown_payment_claims_no_key_and_queues_nothing(
    api: Api, app: web.Application, db: asyncpg.Connection
) -> None:
    await api.admin_user()  # logged in once, before the requests start together
    replies = await asyncio.gather(*(_refund(api, 999999, key=f"k-{i}") for i in range(10)))
    assert {reply.status for reply in replies} == {404}
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert app[CONTEXT].supervisor.live_count == 0


@pytest.mark.parametrize("config_overrides", [{"max_commands_per_user": 2, "payment_provider_latency_ms": 400}])
async def test_an_admins_refunds_in_flight_are_bounded_and_a_refused_one_keeps_its_key_free(
    api: Api, db: asyncpg.Connection
) -> None:
    payments = [(await _paid(api, quantity=1))[2] for _ in range(4)]
    await api.admin_user()
    replies = await asyncio.gather(*(_refund(api, p["id"], key=f"r-{p['id']}") for p in payments))
    statuses = sorted(reply.status for reply in replies)
    assert statuses == [201, 201, 429, 429], statuses
    assert all("Retry-After" in reply.headers for reply in replies if reply.status == 429)
    # 429 is transient: no answer stored, so the same key refunds on a retry.
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 2
    refused = [p for p, reply in zip(payments, replies, strict=True) if reply.status == 429]
    for p in refused:
        assert (await _refund(api, p["id"], key=f"r-{p['id']}")).status == 201


# --- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fulfilment", [["shipped"], ["shipped", "delivered"]])
async def test_shipped_and_delivered_orders_become_refunded_too(api: Api, fulfilment: list[str]) -> None:
    _, order, payment = await _paid(api)
    admin = await api.admin_user()
    for status in fulfilment:
        put = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": status}, token=admin.token)
        assert put.status == 200
    assert (await _refund(api, payment["id"])).status == 201
    assert (await _order(api, order["id"]))["status"] == "refunded"


async def test_refunded_is_terminal_and_never_asked_for_through_the_api(api: Api) -> None:
    user, order, payment = await _paid(api)
    admin = await api.admin_user()
    path = f"/api/orders/{order['id']}"
    # Nobody can set `refunded` by hand, not even on a paid order.
    assert (await api.call("PUT", path, json={"status": "refunded"}, token=admin.token)).status == 409
    assert (await _refund(api, payment["id"])).status == 201
    for status in ("shipped", "delivered", "cancelled", "paid", "refunded"):
        assert (await api.call("PUT", path, json={"status": status}, token=admin.token)).status == 409, status
    assert (await api.call("DELETE", path, token=admin.token)).status == 409
    assert (await api.call("DELETE", path, token=user.token)).status == 409
    assert (await _order(api, order["id"]))["status"] == "refunded"
    listed = await api.call("GET", "/api/orders?status=refunded", token=admin.token)
    assert [o["id"] for o in listed.json["items"]] == [order["id"]]


# --- restock ----------------------------------------------------------------------------------


async def test_restock_on_the_completing_refund_returns_every_unit(gateway: Gateway, api: Api, clean_db: str) -> None:
    user = await api.customer()
    lamp = await api.product(price=300, stock=10)
    mug = await api.product(price=200, stock=10)
    order = (await api.order(user, (lamp["id"], 3), (mug["id"], 2))).json
    payment = (await api.pay(user, order["id"])).json
    assert (await api.stock(lamp["id"]), await api.stock(mug["id"])) == (7, 8)
    assert (await _refund(api, payment["id"], amount=500)).status == 201
    assert (await api.stock(lamp["id"]), await api.stock(mug["id"])) == (7, 8)
    last = await _refund(api, payment["id"], restock=True)
    assert last.status == 201, last
    assert last.json["restock"] is True
    assert (await api.stock(lamp["id"]), await api.stock(mug["id"])) == (10, 10)
    assert await gateway.violations(clean_db) == []


async def test_restock_on_a_refund_that_does_not_complete_the_amount_is_422(
    gateway: Gateway, api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    _, order, payment = await _paid(api)
    product_id = order["items"][0]["product_id"]
    reply = await _refund(api, payment["id"], amount=999, restock=True)
    assert reply.status == 422
    assert reply.json["errors"][0]["field"] == "restock"
    assert await _provider_refunds(gateway, db) == []
    assert await api.stock(product_id) == 8
    assert (await _payment(api, payment["id"]))["amount_refunded"] == 0
    assert await gateway.violations(clean_db) == []


async def test_a_refund_without_restock_leaves_the_stock_sold(gateway: Gateway, api: Api, clean_db: str) -> None:
    _, order, payment = await _paid(api)
    assert (await _refund(api, payment["id"])).status == 201
    assert await api.stock(order["items"][0]["product_id"]) == 8
    assert await gateway.violations(clean_db) == []


async def test_the_stock_invariant_counts_restocked_units_once(
    gateway: Gateway, api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    _, order, payment = await _paid(api)
    assert (await _refund(api, payment["id"], restock=True)).status == 201
    assert await gateway.violations(clean_db) == []
    # Restocking twice would show: the units would be in stock and counted as returned.
    await db.execute("UPDATE products SET stock = stock + 2 WHERE id = $1", order["items"][0]["product_id"])
    assert any(p.startswith("product ") for p in await gateway.violations(clean_db))


# --- the provider refuses ---------------------------------------------------------------------


async def test_a_refund_the_provider_refuses_is_402_and_nothing_changes(
    gateway: Gateway, api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    _, order, payment = await _paid(api, card="tok_refundFail")
    reply = await _refund(api, payment["id"], restock=True)
    if gateway.stripe:
        # Stripe: the refund succeeds first and fails later (its event undoes it).
        assert (reply.status, reply.json["status"]) == (201, "succeeded")
        assert (await _order(api, order["id"]))["status"] == "refunded"
        refund = await _wait_failed(api, payment["id"])
        assert (refund["status"], refund["failure_reason"]) == ("failed", "expired_or_canceled_card")
        assert (await _payment(api, payment["id"]))["amount_refunded"] == 0
        after = await _order(api, order["id"])
        assert (after["status"], after["amount_refunded"]) == ("paid", 0)
        assert await api.stock(order["items"][0]["product_id"]) == 10  # the restocked units stay
        again = await _refund(api, payment["id"], amount=1000, restock=True)
        assert again.status == 201  # and the units are not returned a second time
        assert await api.stock(order["items"][0]["product_id"]) == 10
        assert await gateway.violations(clean_db) == []
        return
    assert reply.status == 402
    assert reply.content_type == "application/json"
    assert (reply.json["status"], reply.json["failure_reason"]) == ("failed", "refund_failed")
    assert set(reply.json) == REFUND_FIELDS
    assert (await _payment(api, payment["id"]))["amount_refunded"] == 0
    after = await _order(api, order["id"])
    assert (after["status"], after["amount_refunded"]) == ("paid", 0)
    assert await api.stock(order["items"][0]["product_id"]) == 8
    # A failed refund reserves nothing: the whole amount can be asked for again.
    assert (await _refund(api, payment["id"], amount=1000)).status == 402
    assert await gateway.violations(clean_db) == []


# --- reading ----------------------------------------------------------------------------------


async def test_refunds_are_listed_oldest_first_and_paginated(api: Api) -> None:
    user, _, payment = await _paid(api)
    for amount in (100, 200, 300):
        assert (await _refund(api, payment["id"], amount=amount)).status == 201
    path = f"/api/payments/{payment['id']}/refunds"
    everything = (await api.call("GET", path, token=user.token)).json
    assert [r["amount"] for r in everything["items"]] == [100, 200, 300]
    assert everything["next_cursor"] is None
    first = (await api.call("GET", f"{path}?limit=2", token=user.token)).json
    assert [r["amount"] for r in first["items"]] == [100, 200]
    second = (await api.call("GET", f"{path}?limit=2&cursor={first['next_cursor']}", token=user.token)).json
    assert [r["amount"] for r in second["items"]] == [300]
    assert second["next_cursor"] is None
    assert set(everything["items"][0]) == REFUND_FIELDS


async def test_refunds_are_visible_to_the_owner_and_admins_only(api: Api) -> None:
    user, _, payment = await _paid(api)
    await _refund(api, payment["id"], amount=10)
    path = f"/api/payments/{payment['id']}/refunds"
    admin = await api.admin_user()
    assert len((await api.call("GET", path, token=user.token)).json["items"]) == 1
    assert len((await api.call("GET", path, token=admin.token)).json["items"]) == 1
    stranger = await api.customer()
    assert (await api.call("GET", path, token=stranger.token)).status == 404
    assert (await api.call("GET", "/api/payments/999999/refunds", token=admin.token)).status == 404
    assert (await api.call("POST", path, json={}, token=user.token)).status == 403


async def test_a_cursor_of_another_payment_is_refused(api: Api) -> None:
    _, _, payment = await _paid(api)
    _, _, other = await _paid(api)
    for p in (payment, other):
        await _refund(api, p["id"], amount=1)
        await _refund(api, p["id"], amount=1)
    admin = await api.admin_user()
    first = (await api.call("GET", f"/api/payments/{payment['id']}/refunds?limit=1", token=admin.token)).json
    reply = await api.call(
        "GET", f"/api/payments/{other['id']}/refunds?cursor={first['next_cursor']}", token=admin.token
    )
    assert reply.status == 422


# --- Idempotency-Key --------------------------------------------------------------------------


async def test_same_key_and_body_replays_the_first_refund_and_refunds_once(
    gateway: Gateway, api: Api, db: asyncpg.Connection
) -> None:
    _, _, payment = await _paid(api)
    first = await _refund(api, payment["id"], key="r-1", amount=250)
    again = await _refund(api, payment["id"], key="r-1", amount=250)
    assert first.status == again.status == 201
    assert again.json == first.json
    assert [tuple(r) for r in await _provider_refunds(gateway, db)] == [(250, "succeeded")]
    assert (await _payment(api, payment["id"]))["amount_refunded"] == 250


async def test_same_key_with_another_body_is_422(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    _, _, payment = await _paid(api)
    assert (await _refund(api, payment["id"], key="r-2", amount=100)).status == 201
    assert (await _refund(api, payment["id"], key="r-2", amount=200)).status == 422
    assert (await _refund(api, payment["id"], key="r-2", amount=100, reason="other")).status == 422
    assert len(await _provider_refunds(gateway, db)) == 1


async def test_a_refused_refund_stores_no_key_and_a_replayed_402_is_the_same_answer(
    gateway: Gateway, api: Api, db: asyncpg.Connection
) -> None:
    _, _, payment = await _paid(api)
    first = await _refund(api, payment["id"], key="too-much", amount=5000)
    again = await _refund(api, payment["id"], key="too-much", amount=5000)
    assert first.status == again.status == 409
    assert again.json == first.json
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'too-much'") == 0
    if gateway.stripe:
        return  # Stripe refuses no refund of a refundFail card at once (it fails later)
    _, _, unrefundable = await _paid(api, card="tok_refundFail")
    failed = await _refund(api, unrefundable["id"], key="fails")
    replayed = await _refund(api, unrefundable["id"], key="fails")
    assert failed.status == replayed.status == 402
    assert replayed.json == failed.json


async def test_a_payments_key_used_for_a_refund_is_422(api: Api) -> None:
    """Keys are per user, and one key names one request, whichever endpoint."""
    admin = await api.admin_user()
    product = await api.product(price=100)
    order = (await api.order(admin, (product["id"], 1))).json
    paid = await api.pay(admin, order["id"], key="shared-key")
    assert paid.status == 201
    assert (await _refund(api, paid.json["id"], key="shared-key")).status == 422


async def test_same_key_while_the_first_is_in_flight_is_409(
    gateway: Gateway, api: Api, app: web.Application, db: asyncpg.Connection
) -> None:
    _, _, payment = await _paid(api)
    hold = hold_provider(app[CONTEXT].provider, "refund")
    first = asyncio.create_task(_refund(api, payment["id"], key="slow"))
    await hold.in_flight()
    assert (await _refund(api, payment["id"], key="slow")).status == 409
    hold.release()
    assert (await first).status == 201
    assert (await _refund(api, payment["id"], key="slow")).status == 201
    assert len(await _provider_refunds(gateway, db)) == 1


async def test_an_unusable_key_is_422(api: Api) -> None:
    _, _, payment = await _paid(api)
    assert (await _refund(api, payment["id"], key="k" * 256)).status == 422


# --- the ceiling ------------------------------------------------------------------------------


async def test_while_a_refund_is_in_flight_in_one_process_another_cannot_take_its_part(
    gateway: Gateway, api: Api, app: web.Application, db: asyncpg.Connection, aiohttp_client: Any, clean_db: str
) -> None:
    settings = make_config(clean_db, **gateway.app_settings())
    other = Api(await aiohttp_client(create_app(settings, Options(dsn=clean_db, jwt_secret=JWT_SECRET))))
    _, order, payment = await _paid(api)
    hold = hold_provider(app[CONTEXT].provider, "refund")
    first = asyncio.create_task(_refund(api, payment["id"], amount=700))
    await hold.in_flight()
    assert (await _refund(other, payment["id"], amount=301)).status == 409
    # Whether a refund completes the amount is unknown while another is in flight.
    restock = await _refund(other, payment["id"], restock=True)
    assert restock.status == 409, restock
    hold.release()
    assert (await first).status == 201
    assert (await _refund(other, payment["id"], amount=300, restock=True)).status == 201
    assert [tuple(r) for r in await _provider_refunds(gateway, db)] == [(300, "succeeded"), (700, "succeeded")]
    assert (await _order(api, order["id"]))["status"] == "refunded"


async def test_the_database_refuses_refunds_beyond_the_amount(api: Api, db: asyncpg.Connection) -> None:
    _, _, payment = await _paid(api)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE payments SET amount_refund_pending = amount + 1 WHERE id = $1", payment["id"])
    await _refund(api, payment["id"], amount=600)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE payments SET amount_refund_pending = 401 WHERE id = $1", payment["id"])


async def test_the_invariant_check_detects_a_refund_recorded_twice(
    gateway: Gateway, api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    _, _, payment = await _paid(api)
    await _refund(api, payment["id"], amount=100)
    await db.execute("UPDATE payments SET amount_refunded = 200 WHERE id = $1", payment["id"])
    assert await gateway.violations(clean_db) != []


# --- events and metrics -----------------------------------------------------------------------


async def _events(db: asyncpg.Connection) -> list[tuple[str, dict[str, Any]]]:
    rows = await db.fetch("SELECT type, data FROM events ORDER BY txid, id")
    return [(r["type"], orjson.loads(r["data"])) for r in rows]


async def test_refund_events_are_written_with_the_change(api: Api, db: asyncpg.Connection) -> None:
    _, order, payment = await _paid(api)
    first = (await _refund(api, payment["id"], amount=400)).json
    last = (await _refund(api, payment["id"])).json
    refund_events = [(t, d) for t, d in await _events(db) if t.startswith("refund.") or t == "order.refunded"]
    assert [t for t, _ in refund_events] == ["refund.succeeded", "refund.succeeded", "order.refunded"]
    assert refund_events[0][1]["id"] == first["id"]
    assert refund_events[1][1]["id"] == last["id"]
    refunded = refund_events[2][1]
    assert (refunded["id"], refunded["status"], refunded["amount_refunded"]) == (order["id"], "refunded", 1000)


async def test_a_failed_refund_writes_refund_failed_only(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    _, _, payment = await _paid(api, card="tok_refundFail")
    await _refund(api, payment["id"])
    if gateway.stripe:
        # Stripe: succeeded (the order refunded), then failed when Stripe says so.
        await _wait_failed(api, payment["id"])
        types = [t for t, _ in await _events(db) if t.startswith("refund.") or t == "order.refunded"]
        assert types == ["refund.succeeded", "order.refunded", "refund.failed"]
        return
    types = [t for t, _ in await _events(db) if t.startswith("refund.") or t == "order.refunded"]
    assert types == ["refund.failed"]


async def test_refunds_are_counted_by_outcome(gateway: Gateway, api: Api) -> None:
    _, _, payment = await _paid(api)
    await _refund(api, payment["id"], amount=1)
    _, _, unrefundable = await _paid(api, card="tok_refundFail")
    await _refund(api, unrefundable["id"])
    if gateway.stripe:
        await _wait_failed(api, unrefundable["id"])
        metrics = await scrape(api)
        assert metrics.value("refunds_total", outcome="succeeded") == 2
        assert metrics.value("refunds_total", outcome="failed_later") == 1
        return
    metrics = await scrape(api)
    assert metrics.value("refunds_total", outcome="succeeded") == 1
    assert metrics.value("refunds_total", outcome="failed") == 1


# --- lost answers and dead processes ------------------------------------------------------------


@pytest.mark.parametrize(
    "config_overrides",
    [{"payment_provider_fault": "error", "payment_provider_fault_rate": 1.0, "payment_provider_timeout_ms": 200}],
)
async def test_an_unknown_outcome_is_202_pending_until_reconciled(
    gateway: Gateway, api: Api, app: web.Application, db: asyncpg.Connection
) -> None:
    provider = app[CONTEXT].provider
    provider.fault = "none"  # type: ignore[attr-defined]
    if gateway.stripe:
        gateway.configure_like()
    _, _, payment = await _paid(api)
    provider.fault = "error"  # type: ignore[attr-defined]
    if gateway.stripe:
        gateway.configure_like(fault="error", rate=1.0)
    reply = await _refund(api, payment["id"])
    assert reply.status == 202
    assert reply.json["status"] == "pending"
    # Its amount stays reserved: nothing more can be refunded meanwhile.
    assert (await _refund(api, payment["id"], amount=1)).status == 409
    if gateway.stripe:
        # Stripe: asked again under the same key once it answers, the refund is made once.
        gateway.configure_like()
        await db.execute("UPDATE refunds SET lease_until = now() - interval '1 second' WHERE id = $1", reply.json["id"])
        refund = await _wait_settled(api, payment["id"])
        assert refund["status"] == "succeeded"
        assert (await _payment(api, payment["id"]))["amount_refunded"] == 1000
        assert await _provider_refunds(gateway, db) == [(1000, "succeeded")]
        return
    await db.execute("UPDATE refunds SET lease_until = now() - interval '1 second' WHERE id = $1", reply.json["id"])
    refund = await _wait_settled(api, payment["id"])
    assert (refund["status"], refund["failure_reason"]) == ("failed", "not_refunded")
    assert (await _payment(api, payment["id"]))["amount_refunded"] == 0
    provider.fault = "none"  # type: ignore[attr-defined]
    assert (await _refund(api, payment["id"])).status == 201


async def _wait_failed(api: Api, payment_id: int) -> dict[str, Any]:
    """The payment's first refund once it failed (Stripe's event came)."""
    admin = await api.admin_user()
    for _ in range(200):
        items = (await api.call("GET", f"/api/payments/{payment_id}/refunds", token=admin.token)).json["items"]
        if items and items[0]["status"] == "failed":
            refund: dict[str, Any] = items[0]
            return refund
        await asyncio.sleep(0.05)
    raise AssertionError("the refund did not fail")


async def _wait_settled(api: Api, payment_id: int) -> dict[str, Any]:
    admin = await api.admin_user()
    for _ in range(150):  # 15 s at most: well within the lease (25 s), generous for a busy machine
        items = (await api.call("GET", f"/api/payments/{payment_id}/refunds", token=admin.token)).json["items"]
        if items and items[0]["status"] != "pending":
            refund: dict[str, Any] = items[0]
            return refund
        await asyncio.sleep(0.1)
    raise AssertionError("the refund stayed pending")


@pytest.mark.parametrize("config_overrides", [{"payment_provider_latency_ms": 1500}])
async def test_a_slow_but_live_process_keeps_its_refund(gateway: Gateway, api: Api, db: asyncpg.Connection) -> None:
    """The reconciler (every 0.5 s here) leaves alone work whose process is alive."""
    _, _, payment = await _paid(api)
    reply = await _refund(api, payment["id"])
    assert reply.status == 201
    assert [tuple(r) for r in await _provider_refunds(gateway, db)] == [(1000, "succeeded")]


@pytest.mark.parametrize(
    "config_overrides", [{"payment_provider_latency_ms": 3000, "payment_reconcile_interval_seconds": 60}]
)
async def test_a_refund_whose_process_is_gone_is_settled_at_once(
    gateway: Gateway, api: Api, app: web.Application, db: asyncpg.Connection, aiohttp_client: Any, clean_db: str
) -> None:
    """A pending refund whose owner holds no liveness lock (its process died) is
    settled by another process's reconciler (every 0.5 s here) long before its
    lease runs out; the provider's lookup voids the key, so the call still on its
    way (it lands 1.5 s after it started) refunds nothing."""
    other = make_config(clean_db, **gateway.app_settings())
    await aiohttp_client(create_app(other, Options(dsn=clean_db, jwt_secret=JWT_SECRET)))
    _, _, payment = await _paid(api)
    hold = hold_provider(app[CONTEXT].provider, "refund")
    refunding = asyncio.create_task(_refund(api, payment["id"]))
    await hold.in_flight()
    # Nobody holds liveness lock 1 (ids are random): as if the process had died.
    assert await db.execute("UPDATE refunds SET worker = 1 WHERE status = 'pending'") == "UPDATE 1"
    settled = await _wait_settled(api, payment["id"])
    if gateway.stripe:
        # Stripe's lookup replays the request under its key: the refund is made once, as
        # asked, and the call still on its way finds it done.
        assert settled["status"] == "succeeded"
        hold.release()
        reply = await refunding
        assert reply.status == 201
        assert await _provider_refunds(gateway, db) == [(1000, "succeeded")]
        assert (await _payment(api, payment["id"]))["amount_refunded"] == 1000
        return
    assert (settled["status"], settled["failure_reason"]) == ("failed", "not_refunded")
    hold.release()  # the refund that was on its way reaches the provider now
    reply = await refunding
    assert reply.status == 402
    assert reply.json["failure_reason"] == "not_refunded"
    assert await _provider_refunds(gateway, db) == []  # the late call found its key void
    assert (await _payment(api, payment["id"]))["amount_refunded"] == 0


# One admin sends the 20 refunds: the per-user bound on commands in flight (16 by
# default) is raised so that all of them reach the provider at once.
@pytest.mark.parametrize(
    "config_overrides",
    [
        {
            "db_pool_max_size": 2,
            "db_pool_min_size": 2,
            "payment_provider_latency_ms": 300,
            "max_commands_per_user": 32,
        }
    ],
)
async def test_no_pooled_connection_is_held_while_the_provider_refunds(api: Api, app: web.Application) -> None:
    ctx = app[CONTEXT]
    payments = [(await _paid(api, quantity=1))[2] for _ in range(20)]
    watch = watch_provider(ctx.provider, "refund", ctx.db.pool)
    replies = await asyncio.gather(*(_refund(api, p["id"]) for p in payments))
    assert [r.status for r in replies] == [201] * 20
    assert watch.holds_no_connection(max_pool=2), watch
