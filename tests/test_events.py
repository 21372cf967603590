"""The outbox through HTTP: every state change writes its event (data as the API
returned it) in the same transaction, and GET /api/events lists them in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from handlers.routing import CONTEXT
from server.domain.shapes import ProductOut, render
from server.runtime.jsonio import dumps
from tests.conftest import STOREFRONT_URL
from tests.helpers import Api, Reply, User, all_events, feed, hold_provider


async def test_events_come_oldest_first_with_the_data_the_api_returned(api: Api, clean_db: str) -> None:
    product = await api.product(name="Lamp")
    user = await api.customer()
    order = (await api.order(user, (product["id"], 2))).json
    events = await all_events(api, clean_db)
    assert [e["type"] for e in events] == ["product.created", "order.created"]
    assert events[0]["data"] == product and events[1]["data"] == order
    assert events[0]["id"] < events[1]["id"]
    assert set(events[0]) == {"id", "type", "created_at", "data"}


async def test_every_order_and_payment_change_emits_its_event(api: Api, clean_db: str) -> None:
    admin = await api.admin_user()
    product = await api.product(stock=10)
    user = await api.customer()
    paid = (await api.order(user, (product["id"], 1))).json
    payment = (await api.pay(user, paid["id"])).json
    shipped = (await api.call("PUT", f"/api/orders/{paid['id']}", json={"status": "shipped"}, token=admin.token)).json
    delivered = await api.call("PUT", f"/api/orders/{paid['id']}", json={"status": "delivered"}, token=admin.token)
    declined = (await api.order(user, (product["id"], 1))).json
    failed = await api.pay(user, declined["id"], card="tok_chargeDeclined")
    assert failed.status == 402
    cancelled = await api.call("PUT", f"/api/orders/{declined['id']}", json={"status": "cancelled"}, token=user.token)
    events = await all_events(api, clean_db)
    assert [e["type"] for e in events] == [
        "product.created", "order.created", "payment.succeeded", "order.paid", "order.shipped", "order.delivered",
        "order.created", "payment.failed", "order.cancelled",
    ]  # fmt: skip
    by_type = {e["type"]: e["data"] for e in events}
    assert by_type["payment.succeeded"] == payment
    assert by_type["payment.failed"] == failed.json
    assert by_type["order.paid"] == (await api.call("GET", f"/api/orders/{paid['id']}", token=user.token)).json | {
        "status": "paid", "updated_at": by_type["order.paid"]["updated_at"],
    }  # fmt: skip
    assert by_type["order.shipped"] == shipped and by_type["order.delivered"] == delivered.json
    assert by_type["order.cancelled"] == cancelled.json


async def test_product_changes_emit_their_events(api: Api, clean_db: str) -> None:
    admin = await api.admin_user()
    product = await api.product()
    updated = await api.call("PUT", f"/api/products/{product['id']}", json={"price": 1}, token=admin.token)
    assert (await api.call("DELETE", f"/api/products/{product['id']}", token=admin.token)).status == 204
    events = await all_events(api, clean_db)
    assert [e["type"] for e in events] == ["product.created", "product.updated", "product.deleted"]
    assert events[1]["data"] == updated.json
    assert events[2]["data"]["id"] == product["id"]


async def test_a_refused_change_emits_nothing(api: Api, clean_db: str) -> None:
    product = await api.product(stock=1)
    user = await api.customer()
    assert (await api.order(user, (product["id"], 5))).status == 409
    admin = await api.admin_user()
    await api.call("POST", "/api/products", json={"name": "x", "price": 1, "stock": 1, "sku": "A"}, token=admin.token)
    assert (
        await api.call(
            "POST", "/api/products", json={"name": "y", "price": 1, "stock": 1, "sku": "A"}, token=admin.token
        )
    ).status == 409
    assert [e["type"] for e in await all_events(api, clean_db)] == ["product.created", "product.created"]


@pytest.fixture
async def database_timezone(request: pytest.FixtureRequest, clean_db: str) -> AsyncIterator[str]:
    """The TimeZone the service's sessions get (the pool sets none, so the database's
    default applies): set before the app opens its pool, reset afterwards."""
    if STOREFRONT_URL:
        pytest.skip("a running deployment's sessions are open already")
    zone: str = request.param
    conn = await asyncpg.connect(clean_db)
    try:
        database = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{database}\" SET timezone = '{zone}'")
        try:
            yield zone
        finally:
            await conn.execute(f'ALTER DATABASE "{database}" RESET timezone')
    finally:
        await conn.close()


async def _two_line_order(api: Api) -> tuple[User, Reply]:
    """An order of two lines, one product's name with quotes to escape, and its 201."""
    lamp, bulb = await api.product(name="Lamp", price=2500), await api.product(name='Bulb "E27"', price=199)
    user = await api.customer()
    created = await api.order(user, (bulb["id"], 3), (lamp["id"], 1))
    assert created.status == 201, created
    return user, created


# Asia/Kolkata: an offset of +05:30, which to_jsonb(timestamptz) would write out.
@pytest.mark.parametrize("database_timezone", ["UTC", "Asia/Kolkata"], indirect=True)
async def test_order_created_carries_the_order_exactly_as_the_api_returns_it(
    database_timezone: str, api: Api, clean_db: str
) -> None:
    # The event stores the order's row as the writing session saw it (its timestamps
    # in that session's time zone); the feed renders it with the order's one shape.
    user, created = await _two_line_order(api)
    shown = await api.call("GET", f"/api/orders/{created.json['id']}", token=user.token)
    (event,) = await all_events(api, clean_db, "?type=order.created")
    assert event["data"] == created.json == shown.json
    for name in ("created_at", "updated_at", "expires_at"):
        assert dumps(event["data"][name]) in created.body, name  # the very bytes of the 201 body


def keyed_like(value: Any, model: Any) -> Any:
    """`value` with the keys of its objects in `model`'s order: jsonb stores an event's
    data with its keys in an order of its own, which JSON does not mean anything by."""
    if isinstance(model, dict):
        return {key: keyed_like(value[key], model[key]) for key in model}
    if isinstance(model, list):
        return [keyed_like(v, m) for v, m in zip(value, model, strict=True)]
    return value


def assert_same_json(data: dict[str, Any], reply: Reply) -> None:
    """An event's data is the API's body: the same fields and, written out by the API's
    encoder in the body's key order, the very bytes of the body."""
    assert data == reply.json
    assert dumps(keyed_like(data, reply.json)) == reply.body


@pytest.mark.parametrize("database_timezone", ["UTC", "Asia/Kolkata"], indirect=True)
async def test_payment_succeeded_and_order_paid_carry_them_exactly_as_the_api_returns_them(
    database_timezone: str, api: Api, clean_db: str
) -> None:
    user, created = await _two_line_order(api)
    order = created.json
    paid = await api.pay(user, order["id"])
    assert paid.status == 201, paid
    shown = await api.call("GET", f"/api/payments/{paid.json['id']}", token=user.token)
    order_shown = await api.call("GET", f"/api/orders/{order['id']}", token=user.token)
    assert order_shown.json["status"] == "paid"
    events = await all_events(api, clean_db, "?type=payment.succeeded,order.paid")
    assert [e["type"] for e in events] == ["payment.succeeded", "order.paid"]
    succeeded, order_paid = events
    # Webhook queues deliver one resource's events in id order.
    assert succeeded["id"] < order_paid["id"]
    assert_same_json(succeeded["data"], paid)
    assert_same_json(succeeded["data"], shown)
    assert_same_json(order_paid["data"], order_shown)


async def test_a_declined_payment_writes_payment_failed_only(api: Api, clean_db: str) -> None:
    product = await api.product()
    user = await api.customer()
    order = (await api.order(user, (product["id"], 1))).json
    declined = await api.pay(user, order["id"], card="tok_chargeDeclined")
    assert declined.status == 402, declined
    events = await all_events(api, clean_db)
    assert [e["type"] for e in events] == ["product.created", "order.created", "payment.failed"]
    assert_same_json(events[2]["data"], declined)
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json["status"] == "pending"


async def test_a_charge_for_an_order_that_can_no_longer_be_paid_writes_payment_failed_only(
    api: Api, app: web.Application, clean_db: str, db: asyncpg.Connection
) -> None:
    product = await api.product()
    user = await api.customer()
    order = (await api.order(user, (product["id"], 1))).json
    hold = hold_provider(app[CONTEXT].provider, "charge")
    paying = asyncio.create_task(api.pay(user, order["id"]))
    await hold.in_flight()
    # Ended outside the rules mid-payment (as in tests/test_payments.py): the charge
    # succeeds, the order is not paid, the payment is recorded failed (and refunded).
    await db.execute("UPDATE orders SET status = 'cancelled', expires_at = NULL WHERE id = $1", order["id"])
    hold.release()
    refused = await paying
    assert (refused.status, refused.json["failure_reason"]) == (402, "order_not_payable"), refused
    events = await all_events(api, clean_db)
    assert [e["type"] for e in events] == ["product.created", "order.created", "payment.failed"]
    assert_same_json(events[2]["data"], refused)


@pytest.mark.parametrize("timezone", ["UTC", "America/St_Johns"])
async def test_a_stored_timestamp_is_rendered_as_the_api_writes_it(db: asyncpg.Connection, timezone: str) -> None:
    # Edge cases an HTTP test meets only by chance: whole seconds (orjson writes no
    # fraction), trailing zeros (it keeps all six digits), and a session TimeZone
    # (-03:30 here) other than UTC, in which an event's stored row is written.
    await db.execute(f"SET timezone = '{timezone}'")
    for microsecond in (0, 1, 120000, 999999):
        at = datetime(2024, 2, 29, 23, 59, 59, microsecond, tzinfo=UTC)
        stored = orjson.loads(await db.fetchval("SELECT to_jsonb($1::timestamptz)::text", at))
        row = {"id": 1, "name": "n", "description": "", "price": 1, "currency": "USD", "stock": 1, "sku": None}
        rendered = render(ProductOut, {**row, "created_at": stored, "updated_at": at})
        assert dumps(rendered["created_at"]) == dumps(rendered["updated_at"]) == dumps(at), stored


@pytest.mark.parametrize("config_overrides", [{"order_max_pending_per_user": 1, "order_max_held_units_per_product": 3}])
async def test_a_refused_order_writes_no_event(api: Api, clean_db: str) -> None:
    # Every refusal of order creation, from the limits and the item rules
    # (sql/functions/orders.sql), returns before the order and its event are written.
    dollars, euros = await api.product(stock=1), await api.product(currency="EUR")
    holder, other = await api.customer(), await api.customer()
    placed = await api.order(holder, (dollars["id"], 1))
    assert placed.status == 201, placed
    refusals = [
        (holder, [(euros["id"], 1)], 409, "ORDER_MAX_PENDING_PER_USER"),
        (other, [(euros["id"], 4)], 409, "ORDER_MAX_HELD_UNITS_PER_PRODUCT"),
        (other, [(dollars["id"], 1)], 409, None),  # short stock
        (other, [(10**9, 1)], 422, None),  # unknown product
        (other, [(dollars["id"], 1), (euros["id"], 1)], 422, None),  # mixed currencies
    ]
    for user, lines, status, limit in refusals:
        refused = await api.order(user, *lines)
        assert (refused.status, refused.json.get("limit")) == (status, limit), refused
    events = await all_events(api, clean_db)
    assert [e["type"] for e in events] == ["product.created", "product.created", "order.created"]
    assert events[2]["data"] == placed.json


async def _wait_for_type(api: Api, clean_db: str, event_type: str) -> list[dict[str, Any]]:
    for _ in range(200):
        events = await all_events(api, clean_db, f"?type={event_type}")
        if events:
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event_type} event")


@pytest.mark.parametrize("config_overrides", [{"order_ttl_seconds": 1, "order_sweep_interval_seconds": 0.2}])
async def test_expiry_by_the_sweeper_emits_order_expired(api: Api, clean_db: str) -> None:
    product = await api.product()
    user = await api.customer()
    order = (await api.order(user, (product["id"], 1))).json
    (expired,) = await _wait_for_type(api, clean_db, "order.expired")
    assert expired["data"]["id"] == order["id"] and expired["data"]["status"] == "expired"


@pytest.mark.parametrize(
    "config_overrides", [{"order_ttl_seconds": 1, "order_sweep_interval_seconds": 60, "actor_idle_seconds": 30}],

)  # fmt: skip
async def test_expiry_by_the_order_actor_emits_order_expired(api: Api, clean_db: str, db: asyncpg.Connection) -> None:
    product = await api.product(stock=5)
    user: User = await api.customer()
    order = (await api.order(user, (product["id"], 1))).json
    # A command starts the order's actor, which then times the expiry (the sweeper
    # runs only once a minute here).
    changed = await api.call(
        "PUT",
        f"/api/orders/{order['id']}",
        json={"items": [{"product_id": product["id"], "quantity": 2}]},
        token=user.token,
    )
    assert changed.status == 200
    (expired,) = await _wait_for_type(api, clean_db, "order.expired")
    assert expired["data"]["id"] == order["id"] and [i["quantity"] for i in expired["data"]["items"]] == [2]


async def test_the_feed_filters_by_repeated_or_comma_separated_types(api: Api, clean_db: str) -> None:
    admin = await api.admin_user()
    product = await api.product()
    await api.call("PUT", f"/api/products/{product['id']}", json={"price": 1}, token=admin.token)
    user = await api.customer()
    await api.order(user, (product["id"], 1))
    one = await all_events(api, clean_db, "?type=order.created")
    both = await all_events(api, clean_db, "?type=order.created,product.updated")
    repeated = await all_events(api, clean_db, "?type=order.created&type=product.updated")
    assert [e["type"] for e in one] == ["order.created"]
    assert [e["type"] for e in both] == [e["type"] for e in repeated] == ["product.updated", "order.created"]
    bad = await api.call("GET", "/api/events?type=order.nonsense", token=admin.token)
    assert bad.status == 422


async def test_next_cursor_is_never_null_and_resumes_after_the_last_event(api: Api, clean_db: str) -> None:
    empty = await feed(api)
    assert empty["items"] == [] and empty["next_cursor"]
    for i in range(3):
        await api.product(name=f"P{i}")
    await all_events(api, clean_db)
    first = await feed(api, f"?after={empty['next_cursor']}&limit=2")
    second = await feed(api, f"?after={first['next_cursor']}&limit=2")
    end = await feed(api, f"?after={second['next_cursor']}")
    assert len(first["items"]) == 2 and len(second["items"]) == 1
    assert end["items"] == [] and end["next_cursor"] == second["next_cursor"]
    await api.product(name="later")
    assert [e["data"]["name"] for e in await _until_shown(api, end["next_cursor"])] == ["later"]


async def _until_shown(api: Api, cursor: str) -> list[dict[str, Any]]:
    for _ in range(400):
        page = await feed(api, f"?after={cursor}")
        if page["items"]:
            return list(page["items"])
        await asyncio.sleep(0.05)
    raise AssertionError("nothing new was shown")


@pytest.mark.parametrize("query", ["?limit=0", "?limit=101", "?after=forged"])
async def test_bad_feed_parameters_are_422(api: Api, query: str) -> None:
    admin = await api.admin_user()
    assert (await api.call("GET", f"/api/events{query}", token=admin.token)).status == 422


async def test_an_event_of_a_transaction_still_open_is_held_back_not_skipped(
    api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    # A transaction that wrote an event and has not committed: its id is lower than
    # the events written after it, which commit first.
    late = await asyncpg.connect(clean_db)
    try:
        tx = late.transaction()
        await tx.start()
        await late.execute("INSERT INTO events (type, data) VALUES ('product.updated', '{\"id\": 0}')")
        await api.product(name="committed first")
        page = await feed(api)
        assert page["items"] == []  # held back while an older transaction is in flight
        await tx.commit()
    finally:
        await late.close()
    await all_events(api, clean_db)
    after = await feed(api, f"?after={page['next_cursor']}")
    assert [e["type"] for e in after["items"]] == ["product.updated", "product.created"]


async def _told_of_events(clean_db: str, statements: list[str]) -> list[str]:
    """The notices a service session (application_name storefront...) gets for these
    statements, run one after another (each a transaction of its own)."""
    conn = await asyncpg.connect(clean_db, server_settings={"application_name": "storefront-test"})
    told: list[str] = []
    conn.add_log_listener(lambda _conn, message: told.append(message.message))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()
    return told


async def test_a_transaction_that_writes_several_events_tells_its_session_once(clean_db: str) -> None:
    told = await _told_of_events(
        clean_db,
        [
            "BEGIN; SELECT emit_event('order.paid', '{}'); SELECT emit_event('payment.succeeded', '{}'); COMMIT",
            "SELECT emit_event('order.created', '{}')",
        ],
    )
    assert told == ["events:written", "events:written"]


async def test_an_event_after_a_savepoint_rolled_back_with_its_events_tells_again(clean_db: str) -> None:
    told = await _told_of_events(
        clean_db,
        [
            "BEGIN; SAVEPOINT s; SELECT emit_event('order.created', '{}'); ROLLBACK TO SAVEPOINT s;"
            " SELECT emit_event('order.created', '{}'); COMMIT"
        ],
    )
    assert told == ["events:written", "events:written"]
