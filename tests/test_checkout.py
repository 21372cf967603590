"""Orders with a shipping address, a shipping method and a discount code (the contract's
"Checkout"): each rule through HTTP, checked and priced in the call that reserves the
stock, with nothing reserved and no redemption held when it refuses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from handlers.schemas import Page
from server.domain.shapes import AddressOut, DiscountOut, OrderOut, ShippingMethodOut
from tests.helpers import ADDRESS, Api, User, all_events, invariant_violations


def _at(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


async def _times_redeemed(api: Api, discount: dict[str, Any]) -> int:
    admin = await api.admin_user()
    reply = await api.call("GET", f"/api/discounts/{discount['id']}", token=admin.token)
    value: int = reply.json["times_redeemed"]
    return value


async def _put(api: Api, user: User, order: dict[str, Any], **body: Any) -> Any:
    return await api.call("PUT", f"/api/orders/{order['id']}", json=body, token=user.token)


def _field_error(reply: Any) -> tuple[str, str]:
    [error] = reply.json["errors"]
    return error["field"], error["message"]


# --- without checkout: as before --------------------------------------------------------


async def test_an_order_without_checkout_fields_totals_as_before(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1250)
    order = (await api.order(user, (product["id"], 2))).json
    assert (order["subtotal"], order["total"], order["shipping"]) == (2500, 2500, 0)
    assert (order["shipping_address"], order["shipping_method"], order["discount"]) == (None, None, None)


# --- addresses ---------------------------------------------------------------------------


async def test_an_inline_address_is_kept_as_given(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    reply = await api.checkout(user, (product["id"], 1), shipping_address={**ADDRESS, "country": "de", "phone": "+49"})
    assert reply.status == 201, reply
    assert reply.json["shipping_address"] == {**ADDRESS, "line2": "", "region": "", "phone": "+49"}


async def test_an_inline_address_is_validated_like_the_address_books(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    for address in ({**ADDRESS, "country": "XX"}, {**ADDRESS, "city": ""}, {"name": "Only a name"}):
        reply = await api.checkout(user, (product["id"], 1), shipping_address=address)
        assert reply.status == 422, (address, reply)
    assert await api.stock(product["id"]) == 5


async def test_an_address_from_the_book_is_a_snapshot_later_edits_do_not_change(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    address = await api.address(user, city="Bonn")
    order = (await api.checkout(user, (product["id"], 1), shipping_address_id=address["id"])).json
    assert order["shipping_address"]["city"] == "Bonn"
    await api.call("PUT", f"/api/users/addresses/{address['id']}", json={"city": "Kiel"}, token=user.token)
    await api.call("DELETE", f"/api/users/addresses/{address['id']}", token=user.token)
    again = await api.call("GET", f"/api/orders/{order['id']}", token=user.token)
    assert again.json["shipping_address"] == order["shipping_address"]


async def test_another_users_or_an_unknown_address_id_is_refused(api: Api) -> None:
    owner, other = await api.customer(), await api.customer()
    product = await api.product(stock=5)
    theirs = await api.address(other)
    for address_id in (theirs["id"], 999999):
        reply = await api.checkout(owner, (product["id"], 1), shipping_address_id=address_id)
        assert reply.status == 422, reply
        assert _field_error(reply)[0] == "shipping_address_id"
    assert await api.stock(product["id"]) == 5


async def test_an_address_is_given_one_way_only(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    address = await api.address(user)
    reply = await api.checkout(user, (product["id"], 1), shipping_address=ADDRESS, shipping_address_id=address["id"])
    assert reply.status == 422, reply


# --- shipping methods --------------------------------------------------------------------


async def test_shipping_is_the_methods_price_added_to_the_total(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1000)
    method = await api.shipping_method(name="Express", price=700, countries=["DE", "AT"])
    reply = await api.checkout(user, (product["id"], 2), shipping_address=ADDRESS, shipping_method_id=method["id"])
    assert reply.status == 201, reply
    order = reply.json
    assert order["shipping_method"] == {"id": method["id"], "name": "Express", "price": 700}
    assert (order["subtotal"], order["shipping"], order["total"]) == (2000, 700, 2700)


async def test_shipping_costs_nothing_once_the_subtotal_reaches_free_over(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1000)
    method = await api.shipping_method(price=700, free_over=3000)
    below = await api.checkout(user, (product["id"], 2), shipping_address=ADDRESS, shipping_method_id=method["id"])
    assert (below.json["shipping"], below.json["total"]) == (700, 2700)
    reached = await api.checkout(user, (product["id"], 3), shipping_address=ADDRESS, shipping_method_id=method["id"])
    assert (reached.json["shipping"], reached.json["total"]) == (0, 3000)
    assert reached.json["shipping_method"]["price"] == 700


async def test_a_method_with_no_countries_ships_anywhere(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    method = await api.shipping_method(countries=[])
    reply = await api.checkout(
        user, (product["id"], 1), shipping_address={**ADDRESS, "country": "NZ"}, shipping_method_id=method["id"]
    )
    assert reply.status == 201, reply


async def test_a_method_needs_an_address(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    method = await api.shipping_method()
    reply = await api.checkout(user, (product["id"], 1), shipping_method_id=method["id"])
    assert reply.status == 422, reply
    assert _field_error(reply) == ("shipping_address", "a shipping method needs a shipping address")
    assert await api.stock(product["id"]) == 5


async def test_a_method_needs_an_address_in_one_of_its_countries(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    method = await api.shipping_method(countries=["AT", "CH"])
    reply = await api.checkout(user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method["id"])
    assert reply.status == 422, reply
    assert _field_error(reply) == ("shipping_method_id", "this shipping method does not ship to DE")
    assert await api.stock(product["id"]) == 5


async def test_a_method_needs_the_orders_currency(api: Api) -> None:
    user = await api.customer()
    product = await api.product(currency="EUR")
    method = await api.shipping_method(currency="USD")
    reply = await api.checkout(user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method["id"])
    assert reply.status == 422, reply
    assert _field_error(reply) == ("shipping_method_id", "this shipping method is for orders in USD")


@pytest.mark.parametrize("state", ["unknown", "disabled", "deleted"])
async def test_an_unknown_disabled_or_deleted_method_is_refused(api: Api, state: str) -> None:
    user, admin = await api.customer(), await api.admin_user()
    product = await api.product(stock=5)
    method = await api.shipping_method()
    path = f"/api/shipping-methods/{method['id']}"
    if state == "disabled":
        await api.call("PUT", path, json={"enabled": False}, token=admin.token)
    elif state == "deleted":
        await api.call("DELETE", path, token=admin.token)
    method_id = 999999 if state == "unknown" else method["id"]
    reply = await api.checkout(user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method_id)
    assert reply.status == 422, reply
    assert _field_error(reply)[0] == "shipping_method_id"
    assert await api.stock(product["id"]) == 5


async def test_later_method_edits_change_no_order(api: Api) -> None:
    user, admin = await api.customer(), await api.admin_user()
    product = await api.product()
    method = await api.shipping_method(name="Parcel", price=500)
    order = await api.checkout(user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method["id"])
    await api.call("PUT", f"/api/shipping-methods/{method['id']}", json={"name": "Box", "price": 900},
                   token=admin.token)  # fmt: skip
    await api.call("DELETE", f"/api/shipping-methods/{method['id']}", token=admin.token)
    again = (await api.call("GET", f"/api/orders/{order.json['id']}", token=user.token)).json
    assert (again["shipping_method"], again["shipping"]) == (order.json["shipping_method"], 500)


# --- discounts ---------------------------------------------------------------------------


async def test_a_percent_code_takes_the_floor_of_its_share_of_the_subtotal(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=999)
    discount = await api.discount(kind="percent", value=15)
    reply = await api.checkout(user, (product["id"], 3), discount_code=discount["code"])
    assert reply.status == 201, reply
    order = reply.json
    assert order["discount"] == {"code": discount["code"], "amount": 449}  # floor(2997 * 0.15) = 449
    assert (order["subtotal"], order["total"]) == (2997, 2548)


async def test_a_fixed_code_takes_its_value_but_never_more_than_the_subtotal(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1000)
    discount = await api.discount(kind="fixed", value=1500)
    small = (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).json
    assert (small["discount"]["amount"], small["total"]) == (1000, 0)
    large = (await api.checkout(user, (product["id"], 3), discount_code=discount["code"])).json
    assert (large["discount"]["amount"], large["total"]) == (1500, 1500)


async def test_the_total_is_subtotal_minus_discount_plus_shipping(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=2000)
    method = await api.shipping_method(price=490)
    discount = await api.discount(kind="percent", value=10)
    order = (
        await api.checkout(
            user, (product["id"], 2), shipping_address=ADDRESS, shipping_method_id=method["id"],
            discount_code=discount["code"],
        )
    ).json  # fmt: skip
    assert (order["subtotal"], order["discount"]["amount"], order["shipping"], order["total"]) == (4000, 400, 490, 4090)


async def test_a_code_is_matched_whatever_its_case(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    await api.discount(code="HELLO-2026")
    reply = await api.checkout(user, (product["id"], 1), discount_code="hello-2026")
    assert reply.status == 201, reply
    assert reply.json["discount"]["code"] == "HELLO-2026"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"enabled": False}, "this discount code is disabled"),
        ({"starts_at": _at(timedelta(days=1))}, "this discount code is not valid yet"),
        ({"ends_at": _at(timedelta(seconds=-1))}, "this discount code has ended"),
        ({"currency": "EUR"}, "this discount code is for orders in EUR"),
        ({"min_subtotal": 1001}, "this discount code needs a subtotal of at least 1001"),
    ],
    ids=["disabled", "not-started", "ended", "other-currency", "below-min-subtotal"],
)
async def test_a_code_that_does_not_apply_is_refused_saying_why(api: Api, fields: dict[str, Any], message: str) -> None:
    user = await api.customer()
    product = await api.product(price=1000, stock=5)
    discount = await api.discount(**fields)
    reply = await api.checkout(user, (product["id"], 1), discount_code=discount["code"])
    assert reply.status == 422, reply
    assert _field_error(reply) == ("discount_code", message)
    assert message in reply.json["detail"]
    assert await api.stock(product["id"]) == 5
    assert await _times_redeemed(api, discount) == 0


async def test_an_unknown_code_is_refused(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=5)
    reply = await api.checkout(user, (product["id"], 1), discount_code="NO-SUCH-CODE")
    assert reply.status == 422, reply
    assert _field_error(reply) == ("discount_code", "no such discount code")
    assert await api.stock(product["id"]) == 5


async def test_the_subtotal_reaching_min_subtotal_exactly_is_enough(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1000)
    discount = await api.discount(min_subtotal=2000)
    assert (await api.checkout(user, (product["id"], 2), discount_code=discount["code"])).status == 201


async def test_a_code_with_no_redemptions_left_is_a_conflict(api: Api) -> None:
    first, second = await api.customer(), await api.customer()
    product = await api.product(stock=5)
    discount = await api.discount(max_redemptions=1)
    assert (await api.checkout(first, (product["id"], 1), discount_code=discount["code"])).status == 201
    refused = await api.checkout(second, (product["id"], 1), discount_code=discount["code"])
    assert refused.status == 409, refused
    assert refused.json["detail"] == "this discount code has no redemptions left"
    assert await api.stock(product["id"]) == 4
    assert await _times_redeemed(api, discount) == 1


async def test_a_customer_who_used_a_code_max_per_customer_times_gets_a_conflict(api: Api) -> None:
    user, other = await api.customer(), await api.customer()
    product = await api.product(stock=10)
    discount = await api.discount(max_per_customer=2)
    for _ in range(2):
        assert (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).status == 201
    refused = await api.checkout(user, (product["id"], 1), discount_code=discount["code"])
    assert refused.status == 409, refused
    assert "(2)" in refused.json["detail"]
    assert (await api.checkout(other, (product["id"], 1), discount_code=discount["code"])).status == 201
    assert await _times_redeemed(api, discount) == 3


async def test_an_order_refused_for_stock_holds_no_redemption(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=1)
    discount = await api.discount(max_redemptions=1)
    refused = await api.checkout(user, (product["id"], 2), discount_code=discount["code"])
    assert refused.status == 409, refused
    assert await _times_redeemed(api, discount) == 0
    assert (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).status == 201


async def test_an_order_refused_for_its_shipping_reserves_nothing_and_holds_no_redemption(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=3)
    method = await api.shipping_method(countries=["FR"])
    discount = await api.discount(max_redemptions=1)
    reply = await api.checkout(
        user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method["id"],
        discount_code=discount["code"],
    )  # fmt: skip
    assert reply.status == 422, reply
    assert (await api.stock(product["id"]), await _times_redeemed(api, discount)) == (3, 0)


async def test_times_redeemed_counts_pending_and_paid_orders(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    discount = await api.discount()
    first = (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).json
    await api.checkout(user, (product["id"], 1), discount_code=discount["code"])
    assert await _times_redeemed(api, discount) == 2
    assert (await api.pay(user, first["id"])).status == 201
    assert await _times_redeemed(api, discount) == 2


@pytest.mark.parametrize("how", ["cancel", "delete", "remove-code", "replace-code"])
async def test_a_pending_order_gives_its_redemption_back(api: Api, how: str) -> None:
    user = await api.customer()
    product = await api.product()
    discount = await api.discount(max_redemptions=1)
    order = (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).json
    if how == "cancel":
        reply = await _put(api, user, order, status="cancelled")
    elif how == "delete":
        reply = await api.call("DELETE", f"/api/orders/{order['id']}", token=user.token)
    elif how == "remove-code":
        reply = await _put(api, user, order, discount_code=None)
        assert (reply.json["discount"], reply.json["total"]) == (None, reply.json["subtotal"])
    else:
        reply = await _put(api, user, order, discount_code=(await api.discount())["code"])
    assert reply.status in (200, 204), reply
    assert await _times_redeemed(api, discount) == 0
    other = await api.customer()
    assert (await api.checkout(other, (product["id"], 1), discount_code=discount["code"])).status == 201


@pytest.mark.parametrize("config_overrides", [{"order_ttl_seconds": 1, "order_sweep_interval_seconds": 0.2}])
async def test_an_expired_order_gives_its_redemption_back(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    discount = await api.discount(max_redemptions=1)
    order = (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).json
    for _ in range(300):  # the sweeper's turn comes within the deadline, however busy the machine
        if (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json["status"] == "expired":
            break
        await asyncio.sleep(0.1)
    assert await _times_redeemed(api, discount) == 0


async def test_a_deleted_code_stays_on_the_orders_that_used_it_and_is_unknown_for_new_ones(api: Api) -> None:
    user, admin = await api.customer(), await api.admin_user()
    product = await api.product()
    discount = await api.discount(kind="fixed", value=100)
    order = (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).json
    await api.pay(user, order["id"])
    assert (await api.call("DELETE", f"/api/discounts/{discount['id']}", token=admin.token)).status == 204
    kept = (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json
    assert (kept["discount"], kept["total"]) == ({"code": discount["code"], "amount": 100}, order["total"])
    again = await api.checkout(user, (product["id"], 1), discount_code=discount["code"])
    assert again.status == 422 and _field_error(again)[1] == "no such discount code"


async def test_max_redemptions_cannot_go_below_times_redeemed(api: Api) -> None:
    user, admin = await api.customer(), await api.admin_user()
    product = await api.product()
    discount = await api.discount(max_redemptions=5)
    for _ in range(2):
        await api.checkout(user, (product["id"], 1), discount_code=discount["code"])
    path = f"/api/discounts/{discount['id']}"
    assert (await api.call("PUT", path, json={"max_redemptions": 1}, token=admin.token)).status == 409
    assert (await api.call("PUT", path, json={"max_redemptions": 2}, token=admin.token)).status == 200


# --- payments and refunds -------------------------------------------------------------


async def test_a_payment_charges_the_total(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=3000)
    method = await api.shipping_method(price=450)
    discount = await api.discount(kind="fixed", value=1000)
    order = (
        await api.checkout(
            user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method["id"],
            discount_code=discount["code"],
        )
    ).json  # fmt: skip
    assert order["total"] == 2450
    assert (await api.pay(user, order["id"], amount=3000)).status == 422
    payment = await api.pay(user, order["id"])
    assert payment.status == 201, payment
    assert payment.json["amount"] == 2450


async def test_refunds_are_capped_by_what_was_charged(api: Api) -> None:
    user, admin = await api.customer(), await api.admin_user()
    product = await api.product(price=3000)
    discount = await api.discount(kind="fixed", value=1000)
    order = (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).json
    payment = (await api.pay(user, order["id"])).json
    path = f"/api/payments/{payment['id']}/refunds"
    assert (await api.call("POST", path, json={"amount": 2001}, token=admin.token)).status == 409
    whole = await api.call("POST", path, json={}, token=admin.token)
    assert whole.status == 201 and whole.json["amount"] == 2000
    assert await _times_redeemed(api, discount) == 1  # a refunded order has used its code


# --- changing a pending order -----------------------------------------------------------


async def test_the_owner_sets_an_address_a_method_and_a_code_on_a_pending_order(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1000)
    method = await api.shipping_method(price=300)
    discount = await api.discount(kind="percent", value=50)
    address = await api.address(user, city="Bonn")
    order = (await api.order(user, (product["id"], 1))).json
    with_address = await _put(api, user, order, shipping_address_id=address["id"])
    assert with_address.status == 200, with_address
    assert with_address.json["shipping_address"]["city"] == "Bonn"
    with_method = await _put(api, user, order, shipping_method_id=method["id"])
    assert (with_method.json["shipping"], with_method.json["total"]) == (300, 1300)
    with_code = await _put(api, user, order, discount_code=discount["code"])
    assert (with_code.json["discount"]["amount"], with_code.json["total"]) == (500, 800)
    assert with_code.json["shipping_address"]["city"] == "Bonn"
    assert await _times_redeemed(api, discount) == 1


async def test_null_removes_each_part(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1000)
    method = await api.shipping_method(price=300)
    order = (
        await api.checkout(user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method["id"])
    ).json
    refused = await _put(api, user, order, shipping_address=None)  # the method still needs it
    assert refused.status == 422 and _field_error(refused)[0] == "shipping_address"
    both = await _put(api, user, order, shipping_address=None, shipping_method_id=None)
    assert both.status == 200, both
    assert (both.json["shipping_address"], both.json["shipping_method"], both.json["total"]) == (None, None, 1000)


async def test_items_and_checkout_change_together_and_totals_are_recomputed(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1000, stock=10)
    method = await api.shipping_method(price=300, free_over=3000)
    discount = await api.discount(kind="percent", value=10)
    order = (
        await api.checkout(
            user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method["id"],
            discount_code=discount["code"],
        )
    ).json  # fmt: skip
    assert (order["subtotal"], order["discount"]["amount"], order["shipping"], order["total"]) == (1000, 100, 300, 1200)
    more = await _put(api, user, order, items=[{"product_id": product["id"], "quantity": 3}])
    assert more.status == 200, more
    assert (more.json["subtotal"], more.json["discount"]["amount"], more.json["shipping"], more.json["total"]) == (
        3000, 300, 0, 2700,
    )  # fmt: skip
    both = await _put(api, user, order, items=[{"product_id": product["id"], "quantity": 2}], discount_code=None)
    assert (both.json["subtotal"], both.json["discount"], both.json["shipping"], both.json["total"]) == (
        2000, None, 300, 2300,
    )  # fmt: skip
    assert await api.stock(product["id"]) == 8


async def test_a_change_that_leaves_the_code_below_its_min_subtotal_is_refused_and_changes_nothing(api: Api) -> None:
    user = await api.customer()
    product = await api.product(price=1000, stock=10)
    discount = await api.discount(min_subtotal=2000)
    order = (await api.checkout(user, (product["id"], 2), discount_code=discount["code"])).json
    reply = await _put(api, user, order, items=[{"product_id": product["id"], "quantity": 1}])
    assert reply.status == 422, reply
    assert _field_error(reply)[0] == "discount_code"
    unchanged = (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json
    assert unchanged == order
    assert (await api.stock(product["id"]), await _times_redeemed(api, discount)) == (8, 1)


async def test_status_comes_alone(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    order = (await api.order(user, (product["id"], 1))).json
    for body in ({"status": "cancelled", "discount_code": None}, {"status": "cancelled", "shipping_method_id": 1}):
        assert (await _put(api, user, order, **body)).status == 422, body


async def test_only_the_owner_changes_the_checkout(api: Api) -> None:
    user, admin = await api.customer(), await api.admin_user()
    product = await api.product()
    discount = await api.discount()
    order = (await api.order(user, (product["id"], 1))).json
    as_admin = await api.call("PUT", f"/api/orders/{order['id']}", json={"discount_code": discount["code"]},
                              token=admin.token)  # fmt: skip
    assert as_admin.status == 403, as_admin
    stranger = await api.customer()
    as_stranger = await _put(api, stranger, order, discount_code=discount["code"])
    assert as_stranger.status == 404


async def test_a_paid_order_keeps_its_checkout(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    discount = await api.discount()
    order = (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).json
    await api.pay(user, order["id"])
    reply = await _put(api, user, order, discount_code=None)
    assert reply.status == 409, reply
    assert await _times_redeemed(api, discount) == 1


async def test_setting_the_code_an_order_holds_again_takes_no_second_redemption(api: Api) -> None:
    user = await api.customer()
    product = await api.product()
    discount = await api.discount(max_redemptions=1, max_per_customer=1)
    order = (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).json
    again = await _put(api, user, order, discount_code=discount["code"].lower())
    assert again.status == 200, again
    assert await _times_redeemed(api, discount) == 1


# --- events and invariants --------------------------------------------------------------


async def test_order_events_carry_the_checkout(api: Api, clean_db: str) -> None:
    user = await api.customer()
    product = await api.product(price=1000)
    method = await api.shipping_method(price=200)
    discount = await api.discount(kind="fixed", value=100)
    order = (
        await api.checkout(
            user, (product["id"], 1), shipping_address=ADDRESS, shipping_method_id=method["id"],
            discount_code=discount["code"],
        )
    ).json  # fmt: skip
    [created] = [e for e in await all_events(api, clean_db) if e["type"] == "order.created"]
    for field in ("subtotal", "shipping_address", "shipping_method", "shipping", "discount", "total"):
        assert created["data"][field] == order[field], field


async def test_the_invariant_checker_finds_a_times_redeemed_that_does_not_match_the_orders(
    api: Api, db: asyncpg.Connection, clean_db: str
) -> None:
    user = await api.customer()
    product = await api.product()
    discount = await api.discount(max_redemptions=5)
    await api.checkout(user, (product["id"], 1), discount_code=discount["code"])
    assert await invariant_violations(clean_db) == []
    await db.execute("UPDATE discounts SET redeemed = redeemed + 1 WHERE id = $1", discount["id"])
    [violation] = await invariant_violations(clean_db)
    assert f"discount {discount['id']}" in violation


# --- guessing codes --------------------------------------------------------------------


@pytest.mark.parametrize("config_overrides", [{"discount_max_unknown_per_user": 3}])
async def test_unknown_codes_past_the_limit_get_429_with_retry_after(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=100)
    for i in range(3):
        assert (await api.checkout(user, (product["id"], 1), discount_code=f"GUESS{i}")).status == 422
    refused = await api.checkout(user, (product["id"], 1), discount_code="GUESS9")
    assert refused.status == 429, refused
    assert 0 < int(refused.headers["Retry-After"]) <= 3600


@pytest.mark.parametrize("config_overrides", [{"discount_max_unknown_per_user": 3}])
async def test_past_the_guessing_limit_even_a_real_code_tells_nothing(api: Api) -> None:
    user, other = await api.customer(), await api.customer()
    product = await api.product(stock=100)
    discount = await api.discount()
    for i in range(3):
        await api.checkout(user, (product["id"], 1), discount_code=f"GUESS{i}")
    assert (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).status == 429
    assert (await api.checkout(user, (product["id"], 1))).status == 201  # orders without a code go on
    assert (await api.checkout(other, (product["id"], 1), discount_code=discount["code"])).status == 201


@pytest.mark.parametrize("config_overrides", [{"discount_max_unknown_per_user": 3}])
async def test_known_codes_do_not_count_as_guesses(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=100)
    discount = await api.discount(enabled=False)
    for _ in range(5):
        assert (await api.checkout(user, (product["id"], 1), discount_code=discount["code"])).status == 422
    assert (await api.checkout(user, (product["id"], 1), discount_code="GUESS")).status == 422


@pytest.mark.parametrize("config_overrides", [{"discount_max_unknown_per_user": 3}])
async def test_a_burst_of_guesses_gets_no_more_answers_than_the_limit(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=100)
    replies = await asyncio.gather(
        *(api.checkout(user, (product["id"], 1), discount_code=f"BURST{i}") for i in range(12))
    )
    statuses = sorted(reply.status for reply in replies)
    assert statuses == [422] * 3 + [429] * 9


@pytest.mark.parametrize("config_overrides", [{"discount_max_unknown_per_user": 3}])
async def test_guessing_through_order_changes_counts_too(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=100)
    order = (await api.order(user, (product["id"], 1))).json
    for i in range(3):
        assert (await _put(api, user, order, discount_code=f"GUESS{i}")).status == 422
    assert (await _put(api, user, order, discount_code="GUESS9")).status == 429


@pytest.mark.parametrize("config_overrides", [{"discount_max_unknown_per_user": 0}])
async def test_a_guessing_limit_of_0_is_off(api: Api) -> None:
    user = await api.customer()
    product = await api.product(stock=100)
    for i in range(25):
        assert (await api.checkout(user, (product["id"], 1), discount_code=f"GUESS{i}")).status == 422


# --- the document ----------------------------------------------------------------------

CHECKOUT_OPERATIONS = {
    ("get", "/api/users/addresses"), ("post", "/api/users/addresses"), ("get", "/api/users/addresses/{id}"),
    ("put", "/api/users/addresses/{id}"), ("delete", "/api/users/addresses/{id}"),
    ("get", "/api/shipping-methods"), ("post", "/api/shipping-methods"), ("get", "/api/shipping-methods/{id}"),
    ("put", "/api/shipping-methods/{id}"), ("delete", "/api/shipping-methods/{id}"),
    ("get", "/api/discounts"), ("post", "/api/discounts"), ("get", "/api/discounts/{id}"),
    ("put", "/api/discounts/{id}"), ("delete", "/api/discounts/{id}"),
}  # fmt: skip


async def test_the_document_covers_the_checkout_and_the_answers_match_its_models(api: Api) -> None:
    document = (await api.call("GET", "/api/openapi.json")).json
    assert {(m, p) for p, item in document["paths"].items() for m in item} >= CHECKOUT_OPERATIONS
    order_fields = document["components"]["schemas"]["OrderOut"]["properties"]
    assert {"subtotal", "shipping_address", "shipping_method", "shipping", "discount"} <= set(order_fields)
    user, admin = await api.customer(), await api.admin_user()
    product = await api.product()
    address = await api.address(user)
    AddressOut.model_validate(address)
    Page[AddressOut].model_validate((await api.call("GET", "/api/users/addresses", token=user.token)).json)
    method = await api.shipping_method()
    ShippingMethodOut.model_validate(method)
    Page[ShippingMethodOut].model_validate((await api.call("GET", "/api/shipping-methods")).json)
    discount = await api.discount()
    DiscountOut.model_validate(discount)
    Page[DiscountOut].model_validate((await api.call("GET", "/api/discounts", token=admin.token)).json)
    order = await api.checkout(
        user, (product["id"], 1), shipping_address_id=address["id"], shipping_method_id=method["id"],
        discount_code=discount["code"],
    )  # fmt: skip
    OrderOut.model_validate(order.json)
