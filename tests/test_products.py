"""The Products section of the contract, through HTTP on a real database."""

from __future__ import annotations

import asyncio
import base64
import random
import urllib.parse
from typing import Any

import asyncpg
import pytest

from tests.helpers import Api

PRODUCT_FIELDS = {"id", "name", "description", "price", "currency", "stock", "sku", "created_at", "updated_at"}


async def test_create_product_returns_201_location_and_defaults(api: Api) -> None:
    admin = await api.admin_user()
    reply = await api.call("POST", "/api/products", json={"name": "Lamp", "price": 2599, "stock": 3}, token=admin.token)
    assert reply.status == 201
    product = reply.json
    assert set(product) == PRODUCT_FIELDS
    assert reply.headers["Location"] == f"/api/products/{product['id']}"
    assert (product["description"], product["currency"], product["sku"]) == ("", "USD", None)
    fetched = await api.call("GET", reply.headers["Location"])
    assert fetched.json == product


async def test_writes_need_an_admin(api: Api) -> None:
    customer = await api.customer()
    product = await api.product()
    body = {"name": "X", "price": 1, "stock": 1}
    for method, path, json in (
        ("POST", "/api/products", body),
        ("PUT", f"/api/products/{product['id']}", {"price": 5}),
        ("DELETE", f"/api/products/{product['id']}", None),
    ):
        anonymous = await api.call(method, path, json=json)
        assert anonymous.status == 401, (method, anonymous)
        assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        forbidden = await api.call(method, path, json=json, token=customer.token)
        assert forbidden.status == 403, (method, forbidden)
    assert (await api.call("GET", f"/api/products/{product['id']}")).json == product


async def test_reads_are_public(api: Api) -> None:
    product = await api.product()
    assert (await api.call("GET", "/api/products")).status == 200
    assert (await api.call("GET", f"/api/products/{product['id']}")).status == 200


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"name": ""}, "name"),
        ({"name": "n" * 201}, "name"),
        ({"description": "d" * 5001}, "description"),
        ({"price": -1}, "price"),
        ({"price": 9.99}, "price"),
        ({"price": "100"}, "price"),
        ({"stock": -1}, "stock"),
        ({"stock": 2**31}, "stock"),
        ({"currency": "EURO"}, "currency"),
        ({"currency": "E1R"}, "currency"),
        ({"sku": ""}, "sku"),
        ({"price": 2**70}, "price"),
    ],
)
async def test_create_validation(api: Api, fields: dict[str, Any], bad: str) -> None:
    admin = await api.admin_user()
    body = {"name": "Valid", "price": 100, "stock": 1, **fields}
    reply = await api.call("POST", "/api/products", json=body, token=admin.token)
    assert reply.status == 422, reply
    assert bad in [e["field"] for e in reply.json["errors"]]


async def test_create_accepts_the_limits(api: Api) -> None:
    product = await api.product(name="n" * 200, description="d" * 5000, price=0, stock=0, currency="eur")
    assert product["currency"] == "EUR"
    assert len(product["name"]) == 200


async def test_duplicate_sku_is_409(api: Api) -> None:
    await api.product(sku="SKU-1")
    admin = await api.admin_user()
    reply = await api.call(
        "POST", "/api/products", json={"name": "B", "price": 1, "stock": 1, "sku": "SKU-1"}, token=admin.token
    )
    assert reply.status == 409


async def test_concurrent_creates_with_one_sku_give_exactly_one_product(api: Api) -> None:
    admin = await api.admin_user()
    body = {"name": "Race", "price": 1, "stock": 1, "sku": "RACE-1"}
    replies = await asyncio.gather(
        *(api.call("POST", "/api/products", json=body, token=admin.token) for _ in range(10))
    )
    assert sorted(r.status for r in replies) == [201] + [409] * 9


async def test_update_is_partial_and_bumps_updated_at(api: Api) -> None:
    product = await api.product(name="Old", description="keep me", price=100, stock=5, sku="P-1")
    admin = await api.admin_user()
    reply = await api.call("PUT", f"/api/products/{product['id']}", json={"price": 250}, token=admin.token)
    assert reply.status == 200
    updated = reply.json
    assert updated["price"] == 250
    for unchanged in ("name", "description", "stock", "sku", "currency", "created_at"):
        assert updated[unchanged] == product[unchanged]
    assert updated["updated_at"] > product["updated_at"]


async def test_update_can_clear_the_sku_but_not_null_other_fields(api: Api) -> None:
    product = await api.product(sku="CLEAR-ME")
    admin = await api.admin_user()
    cleared = await api.call("PUT", f"/api/products/{product['id']}", json={"sku": None}, token=admin.token)
    assert cleared.json["sku"] is None
    bad = await api.call("PUT", f"/api/products/{product['id']}", json={"price": None}, token=admin.token)
    assert bad.status == 422


async def test_update_to_a_taken_sku_is_409_and_unknown_id_404(api: Api) -> None:
    await api.product(sku="TAKEN")
    other = await api.product()
    admin = await api.admin_user()
    taken = await api.call("PUT", f"/api/products/{other['id']}", json={"sku": "TAKEN"}, token=admin.token)
    assert taken.status == 409
    missing = await api.call("PUT", "/api/products/999999", json={"price": 1}, token=admin.token)
    assert missing.status == 404


async def test_update_rejects_fields_that_are_not_product_fields(api: Api) -> None:
    product = await api.product()
    admin = await api.admin_user()
    reply = await api.call(
        "PUT", f"/api/products/{product['id']}", json={"id": 77, "created_at": "x"}, token=admin.token
    )
    assert reply.status == 422
    assert (await api.call("GET", f"/api/products/{product['id']}")).json == product


async def test_deleted_product_is_404_and_not_listed(api: Api) -> None:
    kept, gone = await api.product(name="Kept"), await api.product(name="Gone")
    admin = await api.admin_user()
    assert (await api.call("DELETE", f"/api/products/{gone['id']}", token=admin.token)).status == 204
    assert (await api.call("GET", f"/api/products/{gone['id']}")).status == 404
    listed = [p["id"] for p in (await api.call("GET", "/api/products")).json["items"]]
    assert listed == [kept["id"]]
    assert (await api.call("DELETE", f"/api/products/{gone['id']}", token=admin.token)).status == 404
    assert (await api.call("PUT", f"/api/products/{gone['id']}", json={"price": 1}, token=admin.token)).status == 404


async def test_deleting_a_product_keeps_order_lines_intact(api: Api) -> None:
    customer = await api.customer()
    product = await api.product(name="Teapot", price=1500, stock=4)
    order = (await api.order(customer, (product["id"], 2))).json
    admin = await api.admin_user()
    await api.call("DELETE", f"/api/products/{product['id']}", token=admin.token)
    again = await api.call("GET", f"/api/orders/{order['id']}", token=customer.token)
    assert again.status == 200
    assert again.json["items"] == order["items"]
    assert again.json["items"][0]["name"] == "Teapot"


async def test_a_deleted_sku_can_be_reused(api: Api) -> None:
    first = await api.product(sku="REUSE")
    admin = await api.admin_user()
    await api.call("DELETE", f"/api/products/{first['id']}", token=admin.token)
    second = await api.product(sku="REUSE")
    assert second["id"] != first["id"]


@pytest.mark.parametrize("path_id", ["abc", "0", "-1", "1.5", "9" * 30, "١٢", "%00"])
async def test_unusable_ids_are_404(api: Api, path_id: str) -> None:
    reply = await api.call("GET", f"/api/products/{path_id}")
    assert reply.status == 404
    assert reply.content_type == "application/problem+json"


# --- the list -----------------------------------------------------------------------------


async def _page(api: Api, query: str) -> dict[str, Any]:
    reply = await api.call("GET", f"/api/products?{query}")
    assert reply.status == 200, reply
    page: dict[str, Any] = reply.json
    return page


async def _walk(api: Api, query: str, limit: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await _page(api, f"{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert len(page["items"]) <= limit
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_list_default_page_is_20_oldest_first(api: Api) -> None:
    products = [await api.product(name=f"P{i}") for i in range(25)]
    page = await _page(api, "")
    assert [p["id"] for p in page["items"]] == [p["id"] for p in products[:20]]
    assert page["next_cursor"] is not None


@pytest.mark.parametrize("limit", ["0", "101", "-5", "ten", "1e3"])
async def test_list_limit_outside_1_to_100_is_422(api: Api, limit: str) -> None:
    reply = await api.call("GET", f"/api/products?limit={limit}")
    assert reply.status == 422
    assert reply.json["errors"][0]["field"] == "limit"


async def test_list_limit_100_is_allowed(api: Api) -> None:
    assert (await api.call("GET", "/api/products?limit=100")).status == 200


async def test_unknown_sort_is_422(api: Api) -> None:
    assert (await api.call("GET", "/api/products?sort=stock")).status == 422


SORT_KEYS = {
    "created_at": lambda p: (p["created_at"], p["id"]),
    "price": lambda p: (p["price"], p["id"]),
    "name": lambda p: (p["name"], p["id"]),
}


@pytest.mark.parametrize("sort", ["created_at", "-created_at", "price", "-price", "name", "-name"])
async def test_every_sort_orders_pages_with_ties_broken_by_id(api: Api, sort: str, db: asyncpg.Connection) -> None:
    rng = random.Random(7)
    for i in range(23):
        # few distinct prices and names: many ties
        await api.product(name=rng.choice(["alpha", "Beta", "gamma"]) + str(i % 2), price=rng.choice([100, 200, 300]))
    await db.execute("UPDATE products SET created_at = '2026-01-01T00:00:00Z' WHERE id % 3 = 0")  # ties in time too
    walked = await _walk(api, f"sort={sort}", limit=4)
    column = sort.lstrip("-")
    expected = sorted(walked, key=SORT_KEYS[column], reverse=sort.startswith("-"))
    assert [p["id"] for p in walked] == [p["id"] for p in expected]
    assert len({p["id"] for p in walked}) == 23


async def test_walking_pages_sees_every_existing_row_exactly_once_while_rows_are_added(api: Api) -> None:
    rng = random.Random(11)
    original = {(await api.product(name=f"orig{i}", price=rng.randint(1, 50)))["id"] for i in range(40)}
    for sort in ("price", "-price", "created_at", "-created_at", "name", "-name"):
        seen: list[int] = []
        cursor = None
        while True:
            page = await _page(api, f"sort={sort}&limit=6" + (f"&cursor={cursor}" if cursor else ""))
            seen.extend(p["id"] for p in page["items"])
            # Other clients add products meanwhile, sorting before and after the position.
            await asyncio.gather(
                *(api.product(name=rng.choice(["aaa", "mmm", "zzz"]), price=rng.randint(1, 50)) for _ in range(3))
            )
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)), f"{sort}: a row was served twice"
        assert original <= set(seen), f"{sort}: rows were skipped"


async def test_a_tampered_cursor_is_422(api: Api) -> None:
    for i in range(3):
        await api.product(name=f"T{i}")
    cursor = (await _page(api, "limit=1"))["next_cursor"]
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[-2] ^= 0x01  # flip a bit of the payload (the sort key)
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    reply = await api.call("GET", f"/api/products?limit=1&cursor={tampered}")
    assert reply.status == 422
    assert reply.json["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize("cursor", ["garbage", "", "%%%", "A" * 2000, "eyJhIjoxfQ"])
async def test_a_malformed_cursor_is_422_not_500(api: Api, cursor: str) -> None:
    reply = await api.call("GET", f"/api/products?cursor={cursor}")
    assert reply.status == 422


async def test_a_cursor_from_another_sort_or_filter_is_422(api: Api) -> None:
    for i in range(3):
        await api.product(name=f"F{i}", price=10 * i)
    cursor = (await _page(api, "limit=1&sort=price"))["next_cursor"]
    assert (await api.call("GET", f"/api/products?limit=1&sort=price&cursor={cursor}")).status == 200
    assert (await api.call("GET", f"/api/products?limit=1&sort=name&cursor={cursor}")).status == 422
    assert (await api.call("GET", f"/api/products?limit=1&sort=price&min_price=1&cursor={cursor}")).status == 422
    customer = await api.customer()
    orders = await api.call("GET", f"/api/orders?cursor={cursor}", token=customer.token)
    assert orders.status == 422


async def test_q_is_a_case_insensitive_substring_of_the_name(api: Api) -> None:
    wanted = {(await api.product(name=n))["id"] for n in ("Blue Teapot", "TEAPOT stand", "tiny teapotx")}
    await api.product(name="Coffee mug")
    await api.product(name="Tea pot (spaced)")
    found = {p["id"] for p in (await _page(api, "q=teaPOT&limit=100"))["items"]}
    assert found == wanted


async def test_q_treats_like_wildcards_literally(api: Api) -> None:
    percent = await api.product(name="100% cotton")
    await api.product(name="1000 cotton")
    underscore = await api.product(name="snake_case")
    await api.product(name="snakeXcase")
    assert [p["id"] for p in (await _page(api, "q=0%25 co"))["items"]] == [percent["id"]]
    assert [p["id"] for p in (await _page(api, "q=ke_ca"))["items"]] == [underscore["id"]]


async def test_q_with_quotes_and_backslashes_is_a_plain_substring(api: Api) -> None:
    tricky = await api.product(name="O'Reilly \\ back'slash")
    await api.product(name="Plain")
    for term in ("O'Reilly", "\\ ba", "k'sl", "y \\ b", "'; DROP TABLE products; --"):
        page = await _page(api, "q=" + urllib.parse.quote(term))
        expected = [tricky["id"]] if term in tricky["name"] else []
        assert [p["id"] for p in page["items"]] == expected, term
    assert (await api.call("GET", f"/api/products/{tricky['id']}")).status == 200


async def test_price_range_and_in_stock_filters_combine_with_sorts(api: Api) -> None:
    specs = [(50, 0), (100, 1), (150, 0), (200, 5), (250, 2), (300, 1)]
    ids = {price: (await api.product(name=f"R{price}", price=price, stock=stock))["id"] for price, stock in specs}
    page = await _page(api, "min_price=100&max_price=250&in_stock=true&sort=-price")
    assert [p["id"] for p in page["items"]] == [ids[250], ids[200], ids[100]]
    assert [p["price"] for p in (await _page(api, "min_price=150&sort=price"))["items"]] == [150, 200, 250, 300]
    assert [p["price"] for p in (await _page(api, "max_price=100&sort=price"))["items"]] == [50, 100]
    all_prices = [p["price"] for p in (await _page(api, "in_stock=false&sort=price"))["items"]]
    assert all_prices == [50, 100, 150, 200, 250, 300]


async def test_filters_are_validated(api: Api) -> None:
    for query in ("min_price=-1", "max_price=abc", "in_stock=maybe", "q=", "q=" + "x" * 201, "q=a%00b"):
        reply = await api.call("GET", f"/api/products?{query}")
        assert reply.status == 422, query
