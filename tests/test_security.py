"""Security through HTTP: who may do what, what a body cannot change, and how the
service answers hostile input (always a 4xx problem, never a 500, never a hang)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import Api, Reply, ServerProcess, User, session


@dataclass
class World:
    owner: User
    other: User
    admin: User
    product: dict[str, Any]
    spare_product: dict[str, Any]


@pytest.fixture
async def world(api: Api) -> World:
    return World(
        owner=await api.customer("Owner"),
        other=await api.customer("Other"),
        admin=await api.admin_user(),
        product=await api.product(stock=1000),
        spare_product=await api.product(stock=1000),
    )


async def _pending(api: Api, w: World) -> int:
    order_id: int = (await api.order(w.owner, (w.product["id"], 1))).json["id"]
    return order_id


async def _payment(api: Api, w: World) -> int:
    payment_id: int = (await api.pay(w.owner, await _pending(api, w))).json["id"]
    return payment_id


Request = Callable[[Api, World], Awaitable[tuple[str, str, Any]]]


def fixed(method: str, path: str, body: Any = None) -> Request:
    async def build(api: Api, w: World) -> tuple[str, str, Any]:
        return method, path, body

    return build


def on_order(method: str, body: Any = None) -> Request:
    async def build(api: Api, w: World) -> tuple[str, str, Any]:
        return method, f"/api/orders/{await _pending(api, w)}", body

    return build


def on_product(method: str, body: Any = None) -> Request:
    async def build(api: Api, w: World) -> tuple[str, str, Any]:
        return method, f"/api/products/{w.spare_product['id']}", body

    return build


def new_order() -> Request:
    async def build(api: Api, w: World) -> tuple[str, str, Any]:
        return "POST", "/api/orders", {"items": [{"product_id": w.product["id"], "quantity": 1}]}

    return build


def pay_owners_order() -> Request:
    async def build(api: Api, w: World) -> tuple[str, str, Any]:
        body = {"order_id": await _pending(api, w), "payment_method": {"type": "card", "token": "tok_visa"}}
        return "POST", "/api/payments", body

    return build


def owners_payment() -> Request:
    async def build(api: Api, w: World) -> tuple[str, str, Any]:
        return "GET", f"/api/payments/{await _payment(api, w)}", None

    return build


def on_owners_payment(method: str, suffix: str, body: Any = None) -> Request:
    async def build(api: Api, w: World) -> tuple[str, str, Any]:
        return method, f"/api/payments/{await _payment(api, w)}{suffix}", body

    return build


# Every endpoint x (anonymous, the resource's owner, another customer, an admin).
MATRIX: list[tuple[str, Request, tuple[int, int, int, int]]] = [
    ("profile get", fixed("GET", "/api/users/profile"), (401, 200, 200, 200)),
    ("profile put", fixed("PUT", "/api/users/profile", {"name": "Renamed"}), (401, 200, 200, 200)),
    ("products list", fixed("GET", "/api/products"), (200, 200, 200, 200)),
    ("product get", on_product("GET"), (200, 200, 200, 200)),
    ("product create", fixed("POST", "/api/products", {"name": "N", "price": 1, "stock": 1}), (401, 403, 403, 201)),
    ("product update", on_product("PUT", {"price": 5}), (401, 403, 403, 200)),
    ("product delete", on_product("DELETE"), (401, 403, 403, 204)),
    ("orders list", fixed("GET", "/api/orders"), (401, 200, 200, 200)),
    ("order get", on_order("GET"), (401, 200, 404, 200)),
    ("order create", new_order(), (401, 201, 201, 201)),
    ("order cancel", on_order("PUT", {"status": "cancelled"}), (401, 200, 404, 200)),
    ("order ship", on_order("PUT", {"status": "shipped"}), (401, 403, 404, 409)),
    ("order lines", on_order("PUT", {"items": [{"product_id": 1, "quantity": 2}]}), (401, 200, 404, 403)),
    ("order delete", on_order("DELETE"), (401, 204, 404, 204)),
    ("payment create", pay_owners_order(), (401, 201, 404, 404)),
    ("payment get", owners_payment(), (401, 200, 404, 200)),
    ("refund create", on_owners_payment("POST", "/refunds", {"amount": 1}), (401, 403, 403, 201)),
    ("refunds list", on_owners_payment("GET", "/refunds"), (401, 200, 404, 200)),
    ("healthz", fixed("GET", "/healthz"), (200, 200, 200, 200)),
    ("readyz", fixed("GET", "/readyz"), (200, 200, 200, 200)),
    ("metrics", fixed("GET", "/metrics"), (200, 200, 200, 200)),
    ("openapi", fixed("GET", "/api/openapi.json"), (200, 200, 200, 200)),
    ("docs", fixed("GET", "/api/docs"), (200, 200, 200, 200)),
]
CALLERS = ("anonymous", "owner", "other", "admin")


@pytest.mark.parametrize(
    ("endpoint", "request_of", "caller", "expected"),
    [(name, req, caller, statuses[i]) for name, req, statuses in MATRIX for i, caller in enumerate(CALLERS)],
    ids=[f"{name}-{caller}" for name, _, _ in MATRIX for caller in CALLERS],
)
async def test_access_matrix(
    api: Api, world: World, endpoint: str, request_of: Request, caller: str, expected: int
) -> None:
    method, path, body = await request_of(api, world)
    if endpoint == "order lines":
        body = {"items": [{"product_id": world.spare_product["id"], "quantity": 2}]}
    token = {"anonymous": None, "owner": world.owner, "other": world.other, "admin": world.admin}[caller]
    reply = await api.call(method, path, json=body, token=token.token if token else None)
    assert reply.status == expected, reply
    if expected >= 400:
        assert reply.content_type == "application/problem+json"
    if expected == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_another_customer_sees_none_of_the_owners_orders(api: Api, world: World) -> None:
    order_id = await _pending(api, world)
    listed = (await api.call("GET", "/api/orders", token=world.other.token)).json["items"]
    assert listed == []
    admin_listed = (await api.call("GET", "/api/orders", token=world.admin.token)).json["items"]
    assert order_id in [o["id"] for o in admin_listed]


async def test_failed_attempts_by_another_customer_change_nothing(api: Api, world: World) -> None:
    order_id = await _pending(api, world)
    path = f"/api/orders/{order_id}"
    before = (await api.call("GET", path, token=world.owner.token)).json
    for method, body in (("PUT", {"status": "cancelled"}), ("DELETE", None)):
        await api.call(method, path, json=body, token=world.other.token)
    await api.pay(world.other, order_id)
    assert (await api.call("GET", path, token=world.owner.token)).json == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/api/users/register",
            {"email": "m@example.com", "password": "password-123", "name": "M", "role": "admin"},
        ),
        ("POST", "/api/users/register", {"email": "m@example.com", "password": "password-123", "name": "M", "id": 1}),
        ("PUT", "/api/users/profile", {"name": "M", "role": "admin"}),
        ("PUT", "/api/users/profile", {"name": "M", "token_version": 0}),
        ("POST", "/api/orders", {"items": [], "status": "paid"}),
        ("POST", "/api/orders", {"items": [{"product_id": 1, "quantity": 1}], "total": 0}),
        ("POST", "/api/orders", {"items": [{"product_id": 1, "quantity": 1}], "user_id": 1}),
        ("POST", "/api/orders", {"items": [{"product_id": 1, "quantity": 1, "unit_price": 0}]}),
        ("POST", "/api/orders", {"items": [{"product_id": 1, "quantity": 1}], "stock": 9}),
        (
            "POST",
            "/api/payments",
            {"order_id": 1, "payment_method": {"type": "card", "token": "t"}, "status": "succeeded"},
        ),
        ("PUT", "/api/products/1", {"id": 9}),
        ("POST", "/api/payments/1/refunds", {"amount": 1, "status": "succeeded"}),
    ],
)
async def test_fields_that_do_not_belong_are_rejected_and_change_nothing(
    api: Api, world: World, method: str, path: str, body: dict[str, Any]
) -> None:
    caller = world.admin if path.startswith("/api/products") or path.endswith("/refunds") else world.owner
    before = (await api.call("GET", "/api/users/profile", token=caller.token)).json
    stock_before = await api.stock(world.product["id"])
    reply = await api.call(method, path, json=body, token=caller.token)
    assert reply.status == 422, reply
    assert (await api.call("GET", "/api/users/profile", token=caller.token)).json == before
    assert await api.stock(world.product["id"]) == stock_before


# --- hostile input --------------------------------------------------------------------------


async def _raw(client: TestClient[Any, Any], method: str, path: str, data: bytes, headers: dict[str, str]) -> Any:
    async with client.request(method, path, data=data, headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[" * 5000 + b"]" * 5000, 400),  # nesting deeper than the parser allows
        (b'{"email": "\xff\xfe", "password": "x"}', 400),  # invalid UTF-8
        (b'{"email": "a@b.co", "password": "pass\\u0000word"}', 422),  # NUL in a string
        (b'{"email": "a@b.co", "password": 1e400}', 400),  # number out of range for a double
        (b'{"email": 18446744073709551616, "password": "x"}', 422),
        (b"", 400),
        (b"null", 422),
        (b'"string"', 422),
    ],
)
async def test_hostile_bodies_get_4xx_problems(client: TestClient[Any, Any], body: bytes, status: int) -> None:
    code, content_type, _ = await asyncio.wait_for(_raw(client, "POST", "/api/users/login", body, JSON), 10)
    assert code == status
    assert content_type.startswith("application/problem+json")


async def test_numbers_beyond_64_bits_are_422_everywhere(api: Api, world: World) -> None:
    huge = 2**64 + 1
    for path, body in (
        ("/api/orders", {"items": [{"product_id": huge, "quantity": 1}]}),
        ("/api/orders", {"items": [{"product_id": 1, "quantity": huge}]}),
        ("/api/payments", {"order_id": huge, "payment_method": {"type": "card", "token": "tok_visa"}}),
        ("/api/payments", {"order_id": 1, "payment_method": {"type": "card", "token": "tok_visa"}, "amount": -huge}),
    ):
        reply = await api.call("POST", path, json=body, token=world.owner.token)
        assert reply.status == 422, (path, reply)


async def test_a_huge_array_is_refused_without_a_500(api: Api, world: World) -> None:
    lines = [{"product_id": world.product["id"], "quantity": 1}] * 5000
    assert (await api.call("POST", "/api/orders", json={"items": lines}, token=world.owner.token)).status == 422
    lines = [{"product_id": world.product["id"], "quantity": 1}] * 60000  # over 1 MiB
    assert (await api.call("POST", "/api/orders", json={"items": lines}, token=world.owner.token)).status == 413
    assert await api.stock(world.product["id"]) == 1000


# The HTTP parser's limits are those of the real server (server/entry/serving.py), so these
# talk to a `python -m server` process.
# (The `live_server` fixture: tests/conftest.py.)


async def _live(server: ServerProcess, path: str, headers: dict[str, str] | None = None) -> Reply:
    async with session(server.url) as http:
        return await asyncio.wait_for(Api(http).call("GET", path, headers=headers), 10)


@pytest.mark.parametrize("length", [100, 5_000, 15_000])
async def test_long_ids_are_404(live_server: ServerProcess, length: int) -> None:
    reply = await _live(live_server, "/api/products/" + "9" * length)
    assert reply.status == 404
    assert reply.content_type == "application/problem+json"


async def test_a_request_line_over_the_limit_is_a_problem_too(live_server: ServerProcess) -> None:
    reply = await _live(live_server, "/api/products?q=" + "a" * 40_000)
    assert reply.status == 400
    assert reply.content_type == "application/problem+json"
    assert b"Traceback" not in reply.body
    assert reply.headers["Server"] == "storefront"  # no versions, even from the HTTP parser's errors


async def test_long_query_values_are_422(live_server: ServerProcess) -> None:
    assert (await _live(live_server, "/api/products?q=" + "a" * 10_000)).status == 422
    assert (await _live(live_server, "/api/products?cursor=" + "a" * 10_000)).status == 422


async def test_query_strings_with_invalid_encoding_are_not_500(api: Api) -> None:
    for query in ("q=%FF%FE", "q=%", "limit=%00", "sort=%E2%82", "min_price=1e309", "in_stock=%ZZ"):
        reply = await api.call("GET", f"/api/products?{query}")
        assert reply.status in (200, 400, 422), (query, reply)


async def test_an_oversized_header_is_a_problem(live_server: ServerProcess) -> None:
    reply = await _live(live_server, "/healthz", headers={"X-Big": "x" * 40_000})
    assert reply.status in (400, 431)
    assert reply.content_type == "application/problem+json"


# --- headers --------------------------------------------------------------------------------


async def test_cors_is_closed_by_default(api: Api) -> None:
    reply = await api.call("GET", "/api/products", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in reply.headers
    preflight = await api.call(
        "OPTIONS", "/api/orders", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 403


@pytest.mark.parametrize("config_overrides", [{"cors_allow_origins": "https://shop.example"}])
async def test_cors_allows_configured_origins_only(api: Api) -> None:
    allowed = await api.call("GET", "/api/products", headers={"Origin": "https://shop.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Origin" in allowed.headers["Vary"]
    preflight = await api.call(
        "OPTIONS", "/api/orders", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    other = await api.call("GET", "/api/products", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_error_responses_carry_the_api_headers(api: Api) -> None:
    reply = await api.call("GET", "/api/nothing", headers={"Authorization": "Bearer x"})
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Cache-Control"] == "no-store"
