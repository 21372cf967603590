"""The Orders section of the contract, through HTTP on a real database."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.helpers import Api, User, eventually, invariant_violations

ORDER_FIELDS = {
    "id", "user_id", "status", "items", "total", "amount_refunded", "currency", "created_at", "updated_at", "expires_at",
    # the checkout's (2026-12-05)
    "subtotal", "shipping_address", "shipping_method", "shipping", "discount",
}  # fmt: skip
ITEM_FIELDS = {"product_id", "name", "unit_price", "quantity", "line_total"}


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_create_order_reserves_stock_and_snapshots_lines(api: Api, clean_db: str) -> None:
    user = await api.customer()
    lamp = await api.product(name="Lamp", price=1999, stock=5)
    mug = await api.product(name="Mug", price=450, stock=10)
    reply = await api.order(user, (lamp["id"], 2), (mug["id"], 3))
    assert reply.status == 201
    order = reply.json
    assert set(order) == ORDER_FIELDS
    assert reply.headers["Location"] == f"/api/orders/{order['id']}"
    assert order["status"] == "pending"
    assert order["user_id"] == user.id
    assert order["items"] == [
        {"product_id": lamp["id"], "name": "Lamp", "unit_price": 1999, "quantity": 2, "line_total": 3998},
        {"product_id": mug["id"], "name": "Mug", "unit_price": 450, "quantity": 3, "line_total": 1350},
    ]
    assert order["total"] == 5348
    assert order["currency"] == "USD"
    ttl = _ts(order["expires_at"]) - _ts(order["created_at"])
    assert timedelta(seconds=899) <= ttl <= timedelta(seconds=901)
    assert (await api.stock(lamp["id"]), await api.stock(mug["id"])) == (3, 7)
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json == order
    assert await invariant_violations(clean_db) == []


async def test_short_line_fails_the_whole_order_with_409_naming_it(api: Api) -> None:
    user = await api.customer()
    plenty = await api.product(name="Plenty", stock=100)
    scarce = await api.product(name="Scarce", stock=1)
    reply = await api.order(user, (plenty["id"], 5), (scarce["id"], 2))
    assert reply.status == 409
    assert reply.json["product_id"] == scarce["id"]
    assert "Scarce" in reply.json["detail"]
    assert (await api.stock(plenty["id"]), await api.stock(scarce["id"])) == (100, 1)
    assert (await api.call("GET", "/api/orders", token=user.token)).json["items"] == []


async def test_ordering_the_last_unit_works_and_the_next_one_is_409(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=1)
    assert (await api.order(user, (product["id"], 1))).status == 201
    assert (await api.order(user, (product["id"], 1))).status == 409
    assert await api.stock(product["id"]) == 0


async def test_duplicate_lines_are_merged(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=100, stock=10)
    reply = await api.order(user, (product["id"], 2), (product["id"], 3))
    assert reply.status == 201
    assert [(i["product_id"], i["quantity"]) for i in reply.json["items"]] == [(product["id"], 5)]
    assert reply.json["total"] == 500
    assert await api.stock(product["id"]) == 5


async def test_merged_quantity_above_1000_is_422(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=5000)
    reply = await api.order(user, (product["id"], 600), (product["id"], 600))
    assert reply.status == 422
    assert reply.json["errors"][0]["field"] == "items[0].quantity"


@pytest.mark.parametrize(
    "items",
    [
        [],
        [{"product_id": 1, "quantity": 0}],
        [{"product_id": 1, "quantity": 1001}],
        [{"product_id": 1}],
        [{"product_id": "1", "quantity": 1}],
        [{"product_id": 1, "quantity": 1}] * 101,
    ],
)
async def test_invalid_items_are_422(api: Api, items: list[dict[str, Any]]) -> None:
    user = await api.customer()
    reply = await api.call("POST", "/api/orders", json={"items": items}, token=user.token)
    assert reply.status == 422


async def test_unknown_or_deleted_product_is_422_naming_the_line(api: Api) -> None:
    user = await api.customer()
    live, gone = await api.product(), await api.product()
    admin = await api.admin_user()
    await api.call("DELETE", f"/api/products/{gone['id']}", token=admin.token)
    reply = await api.order(user, (live["id"], 1), (gone["id"], 1), (987654, 1))
    assert reply.status == 422
    assert [e["field"] for e in reply.json["errors"]] == ["items[1].product_id", "items[2].product_id"]
    assert await api.stock(live["id"]) == 10


async def test_mixed_currencies_are_422(api: Api) -> None:
    user = await api.customer()
    usd, eur = await api.product(currency="USD"), await api.product(currency="EUR")
    reply = await api.order(user, (usd["id"], 1), (eur["id"], 1))
    assert reply.status == 422
    assert (await api.stock(usd["id"]), await api.stock(eur["id"])) == (10, 10)


async def test_order_body_cannot_set_status_total_or_user(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    body = {"items": [{"product_id": product["id"], "quantity": 1}], "status": "paid", "total": 0, "user_id": 1}
    reply = await api.call("POST", "/api/orders", json=body, token=user.token)
    assert reply.status == 422
    assert await api.stock(product["id"]) == 10


async def test_lines_keep_their_snapshot_after_product_edits(api: Api) -> None:
    user = await api.customer()
    product = await api.product(name="Before", price=100)
    order = (await api.order(user, (product["id"], 1))).json
    admin = await api.admin_user()
    await api.call("PUT", f"/api/products/{product['id']}", json={"name": "After", "price": 999}, token=admin.token)
    again = (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json
    assert again["items"][0]["name"] == "Before"
    assert again["items"][0]["unit_price"] == 100
    assert again["total"] == 100


async def test_orders_need_a_user(api: Api) -> None:
    assert (await api.call("GET", "/api/orders")).status == 401
    assert (await api.call("POST", "/api/orders", json={"items": [{"product_id": 1, "quantity": 1}]})).status == 401


async def test_another_users_order_is_404_everywhere(api: Api) -> None:
    owner, other = await api.customer(), await api.customer()
    product = await api.product()
    order = (await api.order(owner, (product["id"], 1))).json
    path = f"/api/orders/{order['id']}"
    assert (await api.call("GET", path, token=other.token)).status == 404
    assert (await api.call("PUT", path, json={"status": "cancelled"}, token=other.token)).status == 404
    assert (
        await api.call("PUT", path, json={"items": [{"product_id": product["id"], "quantity": 2}]}, token=other.token)
    ).status == 404
    assert (await api.call("DELETE", path, token=other.token)).status == 404
    assert (await api.call("GET", path, token=owner.token)).json["status"] == "pending"
    assert await api.stock(product["id"]) == 9


async def test_admin_reads_any_order(api: Api) -> None:
    owner = await api.customer()
    product = await api.product()
    order = (await api.order(owner, (product["id"], 1))).json
    admin = await api.admin_user()
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=admin.token)).json == order


async def _orders(api: Api, user: User, query: str = "") -> dict[str, Any]:
    reply = await api.call("GET", f"/api/orders?{query}", token=user.token)
    assert reply.status == 200, reply
    page: dict[str, Any] = reply.json
    return page


async def test_list_shows_the_callers_orders_newest_first(api: Api) -> None:
    alice, bob = await api.customer(), await api.customer()
    product = await api.product(stock=100)
    mine = [(await api.order(alice, (product["id"], 1))).json["id"] for _ in range(3)]
    await api.order(bob, (product["id"], 1))
    page = await _orders(api, alice)
    assert [o["id"] for o in page["items"]] == mine[::-1]
    assert page["next_cursor"] is None


async def test_list_is_keyset_paginated(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=100)
    created = [(await api.order(user, (product["id"], 1))).json["id"] for _ in range(7)]
    seen, cursor = [], None
    while True:
        page = await _orders(api, user, "limit=3" + (f"&cursor={cursor}" if cursor else ""))
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created[::-1]


async def test_admin_lists_everyone_and_filters_by_user_and_status(api: Api) -> None:
    alice, bob = await api.customer(), await api.customer()
    product = await api.product(stock=100)
    a1 = (await api.order(alice, (product["id"], 1))).json["id"]
    b1 = (await api.order(bob, (product["id"], 1))).json["id"]
    await api.call("PUT", f"/api/orders/{a1}", json={"status": "cancelled"}, token=alice.token)
    admin = await api.admin_user()
    assert {o["id"] for o in (await _orders(api, admin))["items"]} == {a1, b1}
    assert [o["id"] for o in (await _orders(api, admin, f"user_id={bob.id}"))["items"]] == [b1]
    assert [o["id"] for o in (await _orders(api, admin, "status=cancelled"))["items"]] == [a1]
    assert (await _orders(api, admin, f"user_id={bob.id}&status=cancelled"))["items"] == []


async def test_a_customer_cannot_list_another_users_orders(api: Api) -> None:
    alice, bob = await api.customer(), await api.customer()
    reply = await api.call("GET", f"/api/orders?user_id={bob.id}", token=alice.token)
    assert reply.status == 403
    assert (await api.call("GET", f"/api/orders?user_id={alice.id}", token=alice.token)).status == 200


# --- changing lines -------------------------------------------------------------------------


async def test_replacing_lines_re_reserves_stock(api: Api, clean_db: str) -> None:
    user = await api.customer()
    a, b = await api.product(name="A", price=100, stock=5), await api.product(name="B", price=30, stock=5)
    order = (await api.order(user, (a["id"], 3))).json
    reply = await api.call(
        "PUT", f"/api/orders/{order['id']}", json={"items": [{"product_id": a["id"], "quantity": 5}, {"product_id": b["id"], "quantity": 2}]},
        token=user.token,
    )  # fmt: skip
    assert reply.status == 200
    assert reply.json["total"] == 560
    assert [(i["product_id"], i["quantity"]) for i in reply.json["items"]] == [(a["id"], 5), (b["id"], 2)]
    assert (await api.stock(a["id"]), await api.stock(b["id"])) == (0, 3)
    assert reply.json["expires_at"] == order["expires_at"]
    assert await invariant_violations(clean_db) == []


async def test_replacing_lines_with_short_stock_is_409_and_changes_nothing(api: Api) -> None:
    user = await api.customer()
    a, b = await api.product(stock=5), await api.product(name="Rare", stock=1)
    order = (await api.order(user, (a["id"], 2))).json
    reply = await api.call(
        "PUT", f"/api/orders/{order['id']}", json={"items": [{"product_id": a["id"], "quantity": 1}, {"product_id": b["id"], "quantity": 2}]},
        token=user.token,
    )  # fmt: skip
    assert reply.status == 409
    assert reply.json["product_id"] == b["id"]
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json == order
    assert (await api.stock(a["id"]), await api.stock(b["id"])) == (3, 1)


async def test_replacing_lines_with_an_unknown_product_is_422_naming_the_line(api: Api) -> None:
    user = await api.customer()
    a = await api.product(stock=5)
    order = (await api.order(user, (a["id"], 2))).json
    reply = await api.call(
        "PUT", f"/api/orders/{order['id']}", json={"items": [{"product_id": a["id"], "quantity": 1}, {"product_id": 987654, "quantity": 1}]},
        token=user.token,
    )  # fmt: skip
    assert reply.status == 422
    assert [e["field"] for e in reply.json["errors"]] == ["items[1].product_id"]
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json == order
    assert await api.stock(a["id"]) == 3


async def test_replacing_lines_with_mixed_currencies_is_422(api: Api) -> None:
    user = await api.customer()
    usd, eur = await api.product(currency="USD"), await api.product(currency="EUR")
    order = (await api.order(user, (usd["id"], 2))).json
    reply = await api.call(
        "PUT", f"/api/orders/{order['id']}", json={"items": [{"product_id": usd["id"], "quantity": 1}, {"product_id": eur["id"], "quantity": 1}]},
        token=user.token,
    )  # fmt: skip
    assert reply.status == 422
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json == order
    assert (await api.stock(usd["id"]), await api.stock(eur["id"])) == (8, 10)


async def test_held_units_count_as_available_when_replacing_lines(api: Api) -> None:
    user = await api.customer()
    rare = await api.product(stock=3)
    order = (await api.order(user, (rare["id"], 3))).json
    reply = await api.call(
        "PUT",
        f"/api/orders/{order['id']}",
        json={"items": [{"product_id": rare["id"], "quantity": 2}]},
        token=user.token,
    )
    assert reply.status == 200
    assert await api.stock(rare["id"]) == 1


async def test_only_the_owner_may_replace_lines(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    admin = await api.admin_user()
    reply = await api.call(
        "PUT",
        f"/api/orders/{order['id']}",
        json={"items": [{"product_id": product["id"], "quantity": 2}]},
        token=admin.token,
    )
    assert reply.status == 403


async def test_lines_of_a_non_pending_order_cannot_change(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    reply = await api.call(
        "PUT",
        f"/api/orders/{order['id']}",
        json={"items": [{"product_id": product["id"], "quantity": 2}]},
        token=user.token,
    )
    assert reply.status == 409
    assert await api.stock(product["id"]) == 10


async def test_put_needs_exactly_one_of_items_or_status(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    for body in (
        {},
        {"items": [{"product_id": product["id"], "quantity": 1}], "status": "cancelled"},
        {"status": "lost"},
    ):
        assert (await api.call("PUT", f"/api/orders/{order['id']}", json=body, token=user.token)).status == 422


# --- status ---------------------------------------------------------------------------------


async def test_owner_cancels_a_pending_order_and_stock_returns(api: Api, clean_db: str) -> None:
    user = await api.customer()
    product = await api.product(stock=4)
    order = (await api.order(user, (product["id"], 3))).json
    reply = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    assert reply.status == 200
    assert reply.json["status"] == "cancelled"
    assert reply.json["expires_at"] is None
    assert await api.stock(product["id"]) == 4
    again = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    assert again.status == 409
    assert await api.stock(product["id"]) == 4
    assert await invariant_violations(clean_db) == []


async def test_admin_can_cancel_a_customers_pending_order(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=2)
    order = (await api.order(user, (product["id"], 2))).json
    admin = await api.admin_user()
    reply = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=admin.token)
    assert reply.json["status"] == "cancelled"
    assert await api.stock(product["id"]) == 2


async def test_paid_order_ships_then_delivers_by_admin_only(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    path = f"/api/orders/{order['id']}"
    admin = await api.admin_user()
    assert (await api.call("PUT", path, json={"status": "shipped"}, token=admin.token)).status == 409  # not paid yet
    assert (await api.pay(user, order["id"])).status == 201
    assert (await api.call("PUT", path, json={"status": "shipped"}, token=user.token)).status == 403
    assert (await api.call("PUT", path, json={"status": "delivered"}, token=admin.token)).status == 409
    assert (await api.call("PUT", path, json={"status": "shipped"}, token=admin.token)).json["status"] == "shipped"
    assert (await api.call("PUT", path, json={"status": "delivered"}, token=user.token)).status == 403
    assert (await api.call("PUT", path, json={"status": "delivered"}, token=admin.token)).json["status"] == "delivered"
    assert (await api.call("PUT", path, json={"status": "cancelled"}, token=admin.token)).status == 409
    assert await api.stock(product["id"]) == 9


@pytest.mark.parametrize("target", ["paid", "expired", "pending"])
async def test_statuses_reserved_to_payment_and_expiry_are_409(api: Api, target: str) -> None:
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    admin = await api.admin_user()
    for who in (user, admin):
        reply = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": target}, token=who.token)
        assert reply.status == 409
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json["status"] == "pending"


async def test_a_paid_order_cannot_be_cancelled(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    await api.pay(user, order["id"])
    reply = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    assert reply.status == 409
    assert await api.stock(product["id"]) == 9


# --- delete ---------------------------------------------------------------------------------


async def test_deleting_a_pending_order_returns_its_stock(api: Api, clean_db: str) -> None:
    user = await api.customer()
    product = await api.product(stock=3)
    order = (await api.order(user, (product["id"], 3))).json
    assert (await api.call("DELETE", f"/api/orders/{order['id']}", token=user.token)).status == 204
    assert await api.stock(product["id"]) == 3
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).status == 404
    assert (await api.call("DELETE", f"/api/orders/{order['id']}", token=user.token)).status == 404
    assert (await api.call("GET", "/api/orders", token=user.token)).json["items"] == []
    assert await invariant_violations(clean_db) == []


async def test_cancelled_and_expired_orders_can_be_deleted_without_moving_stock(
    api: Api, db: asyncpg.Connection
) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    cancelled = (await api.order(user, (product["id"], 1))).json
    await api.call("PUT", f"/api/orders/{cancelled['id']}", json={"status": "cancelled"}, token=user.token)
    assert (await api.call("DELETE", f"/api/orders/{cancelled['id']}", token=user.token)).status == 204
    assert await api.stock(product["id"]) == 5
    expired = (await api.order(user, (product["id"], 2))).json
    await db.execute("UPDATE orders SET expires_at = now() - interval '1 second' WHERE id = $1", expired["id"])
    await eventually(lambda: _status_is(api, user, expired["id"], "expired"))  # the sweeper (every 0.5 s in tests)
    assert (await api.call("DELETE", f"/api/orders/{expired['id']}", token=user.token)).status == 204
    assert await api.stock(product["id"]) == 5


async def test_paid_orders_cannot_be_deleted(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    await api.pay(user, order["id"])
    admin = await api.admin_user()
    for who in (user, admin):
        assert (await api.call("DELETE", f"/api/orders/{order['id']}", token=who.token)).status == 409
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json["status"] == "paid"


async def test_admin_can_delete_a_customers_pending_order(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=2)
    order = (await api.order(user, (product["id"], 2))).json
    admin = await api.admin_user()
    assert (await api.call("DELETE", f"/api/orders/{order['id']}", token=admin.token)).status == 204
    assert await api.stock(product["id"]) == 2


# --- expiry ---------------------------------------------------------------------------------


async def _status_is(api: Api, user: User, order_id: int, status: str) -> bool:
    reply = await api.call("GET", f"/api/orders/{order_id}", token=user.token)
    return bool(reply.json["status"] == status)


@pytest.mark.parametrize("config_overrides", [{"order_ttl_seconds": 1, "order_sweep_interval_seconds": 60}])
async def test_a_live_actor_expires_its_order_on_time(api: Api, clean_db: str) -> None:
    """The sweeper is slowed down: the actor's own timer must do it."""
    user = await api.customer()
    product = await api.product(stock=2)
    order = (await api.order(user, (product["id"], 2))).json
    # A command starts the order's actor, which then keeps the expiry timer.
    await api.call(
        "PUT",
        f"/api/orders/{order['id']}",
        json={"items": [{"product_id": product["id"], "quantity": 1}]},
        token=user.token,
    )
    # The sweeper runs every 60 s here: only the actor's timer can expire it this soon.
    await eventually(lambda: _status_is(api, user, order["id"], "expired"), timeout=30)
    reply = await api.call("GET", f"/api/orders/{order['id']}", token=user.token)
    assert reply.json["status"] == "expired"
    assert reply.json["expires_at"] is None
    assert await api.stock(product["id"]) == 2
    assert await invariant_violations(clean_db) == []


@pytest.mark.parametrize("config_overrides", [{"order_ttl_seconds": 1}])
async def test_the_sweeper_expires_orders_no_actor_covers(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=3)
    orders = [(await api.order(user, (product["id"], 1))).json for _ in range(3)]
    for order in orders:
        await eventually(lambda order=order: _status_is(api, user, order["id"], "expired"))
    assert await api.stock(product["id"]) == 3
    assert (await api.pay(user, orders[0]["id"])).status == 409


@pytest.mark.parametrize("config_overrides", [{"order_ttl_seconds": 1, "order_sweep_interval_seconds": 60}])
async def test_commands_on_an_order_past_its_expiry_find_it_expired(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=3)
    order = (await api.order(user, (product["id"], 3))).json
    await asyncio.sleep(1.2)  # due, but no actor and no sweep yet
    reply = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    assert reply.status == 409
    assert (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json["status"] == "expired"
    assert await api.stock(product["id"]) == 3


# --- invariant ------------------------------------------------------------------------------


async def test_the_invariant_checker_detects_a_stock_leak(api: Api, db: asyncpg.Connection, clean_db: str) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    await api.order(user, (product["id"], 2))
    assert await invariant_violations(clean_db) == []
    await db.execute("UPDATE products SET stock = stock + 1 WHERE id = $1", product["id"])  # units from nowhere
    assert await invariant_violations(clean_db) == [f"product {product['id']}: received 5 != stock 4 + held 2 + sold 0"]


async def _holds(db: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], ...]:
    """The hold counters, each table's rows in key order."""
    queries = (
        "SELECT user_id, orders FROM customer_pending_orders ORDER BY 1",
        "SELECT user_id, product_id, units FROM customer_holds ORDER BY 1, 2",
        "SELECT client_ip, product_id, units FROM address_holds ORDER BY 1, 2",
    )
    return tuple([[tuple(r) for r in await db.fetch(query)] for query in queries])


async def test_hold_counters_follow_orders_as_they_are_placed_changed_and_ended(
    api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    user = await api.customer()
    p1, p2 = (await api.product(stock=10))["id"], (await api.product(stock=10))["id"]
    first = (await api.order(user, (p1, 2))).json["id"]
    second = (await api.order(user, (p1, 1), (p2, 1))).json["id"]
    ip = "127.0.0.1"
    assert await _holds(db) == ([(user.id, 2)], [(user.id, p1, 3), (user.id, p2, 1)], [(ip, p1, 3), (ip, p2, 1)])
    items = [{"product_id": p2, "quantity": 3}]
    assert (await api.call("PUT", f"/api/orders/{first}", json={"items": items}, token=user.token)).status == 200
    assert await _holds(db) == ([(user.id, 2)], [(user.id, p1, 1), (user.id, p2, 4)], [(ip, p1, 1), (ip, p2, 4)])
    await api.call("PUT", f"/api/orders/{second}", json={"status": "cancelled"}, token=user.token)
    assert await _holds(db) == ([(user.id, 1)], [(user.id, p2, 3)], [(ip, p2, 3)])
    assert await invariant_violations(clean_db) == []
    assert (await api.call("DELETE", f"/api/orders/{first}", token=user.token)).status == 204
    assert await _holds(db) == ([], [], [])


async def test_hold_counters_of_one_product_orders_go_down_as_they_are_paid_and_vanish_at_zero(
    api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    """Orders of one product move the counters one row at a time (move_holds' own path)."""
    user = await api.customer()
    product = (await api.product(stock=10))["id"]
    first = (await api.order(user, (product, 2))).json["id"]
    second = (await api.order(user, (product, 3))).json["id"]
    ip = "127.0.0.1"
    assert await _holds(db) == ([(user.id, 2)], [(user.id, product, 5)], [(ip, product, 5)])
    assert (await api.pay(user, first)).status == 201
    assert await _holds(db) == ([(user.id, 1)], [(user.id, product, 3)], [(ip, product, 3)])
    assert (await api.pay(user, second)).status == 201
    assert await _holds(db) == ([], [], [])
    assert await invariant_violations(clean_db) == []


_HELD = (
    "INSERT INTO customer_pending_orders VALUES (7, 1)",
    "INSERT INTO customer_holds VALUES (7, 11, 2)",
    "INSERT INTO address_holds VALUES ('10.0.0.1', 11, 2)",
)


async def _moved(db: asyncpg.Connection, held: bool, elements: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The counters after move_holds(elements) from none, or from one order of 2 units
    (`held`); rolled back."""
    transaction = db.transaction()
    await transaction.start()
    try:
        for statement in _HELD if held else ():
            await db.execute(statement)
        columns = [list(column) for column in zip(*elements, strict=True)]
        await db.execute("SELECT move_holds($1::bigint[], $2::text[], $3::bigint[], $4::int[], $5::int[])", *columns)
        return await _holds(db)
    finally:
        await transaction.rollback()


@pytest.mark.parametrize(
    ("held", "element"),
    [
        (False, (7, "10.0.0.1", 11, 2, 1)),  # an order placed
        (True, (7, "10.0.0.1", 11, -2, -1)),  # ... and ended: every counter emptied
        (True, (7, "10.0.0.1", 11, 3, 0)),  # items added to a held order
        (True, (7, "10.0.0.1", 11, -1, 0)),  # some taken away
        (True, (7, "10.0.0.1", 11, 0, 1)),  # an order and no units
        (True, (7, None, 11, -2, -1)),  # one placed from no known address, ended
    ],
)
async def test_move_holds_moves_one_element_as_its_batch_path_does(
    db: asyncpg.Connection, held: bool, element: tuple[Any, ...]
) -> None:
    """One element takes move_holds' own path; beside an element that moves nothing, the
    same element takes the batch path. The two must agree."""
    nothing = (999, None, 999, 0, 0)
    assert await _moved(db, held, [element]) == await _moved(db, held, [element, nothing])


async def test_the_invariant_checker_detects_a_hold_counter_that_drifted(
    api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    await api.order(user, (product["id"], 2))
    await db.execute("UPDATE customer_holds SET units = units + 1")
    assert await invariant_violations(clean_db) == [
        f"customer_holds {user.id}/{product['id']}: kept 3 != 2 counted from the pending orders"
    ]


async def test_stock_can_never_go_negative(db: asyncpg.Connection, api: Api) -> None:
    product = await api.product(stock=1)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE products SET stock = -1 WHERE id = $1", product["id"])


async def test_restocking_keeps_the_invariant(api: Api, clean_db: str) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    await api.order(user, (product["id"], 4))
    admin = await api.admin_user()
    await api.call("PUT", f"/api/products/{product['id']}", json={"stock": 50}, token=admin.token)
    await api.order(user, (product["id"], 10))
    assert await invariant_violations(clean_db) == []
