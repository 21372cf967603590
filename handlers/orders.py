"""Orders: create, read, list, change (items, shipping and discount, or status) and delete."""

from __future__ import annotations

from aiohttp import web

from handlers.common import client_ip, context, created, page_response, parse_query, path_id, principal, read_json
from handlers.routing import Link, Response, Route, id_links
from handlers.schemas import OrderCreateIn, OrderItemIn, OrderListQuery, OrderUpdateIn, Page
from server.domain import orders
from server.domain.shapes import OrderOut, render
from server.runtime.jsonio import json_response


def _items(items: list[OrderItemIn]) -> list[tuple[int, int]]:
    return [(item.product_id, item.quantity) for item in items]


async def create_order(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    body = await read_json(request, OrderCreateIn)
    order = await orders.create(ctx, caller, _items(body.items), client_ip(request, ctx.config), body.checkout())
    return created(request, "get_order", OrderOut, order)


async def get_order(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    return json_response(render(OrderOut, await orders.get(ctx, caller, path_id(request))))


async def list_orders(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    query = parse_query(request, OrderListQuery)
    page = await orders.page(
        ctx, caller, user_id=query.user_id, status=query.status, cursor=query.cursor, limit=query.limit
    )
    return page_response(OrderOut, page)


async def update_order(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    order_id = path_id(request)
    body = await read_json(request, OrderUpdateIn)
    if body.status is None:
        items = None if body.items is None else _items(body.items)
        order = await orders.change(ctx, caller, order_id, items, body.checkout())
    else:
        order = await orders.change_status(ctx, caller, order_id, body.status)
    return json_response(render(OrderOut, order))


async def delete_order(request: web.Request) -> web.Response:
    ctx, caller = context(request), principal(request)
    await orders.delete(ctx, caller, path_id(request))
    return web.Response(status=204)


_BUSY = "Too many commands queued for this order, or shutting down (see Retry-After)"
_USER_BUSY = "Too many of the caller's order and payment requests in progress (see Retry-After)"
_GUESSES = "Too many unknown discount codes this hour (DISCOUNT_MAX_UNKNOWN_PER_USER; see Retry-After)"

ROUTES = [
    Route(
        "GET", "/api/orders", list_orders, "The caller's orders, newest first (admins: everyone's)", "orders",
        auth="user",
        query=OrderListQuery,
        responses={200: Response("A page of orders", Page[OrderOut])},
        problems={403: "A customer asked for another user's orders"},
    ),
    Route(
        "GET", "/api/orders/{id}", get_order, "One order", "orders",
        auth="user",
        responses={200: Response("The order", OrderOut)},
        problems={404: "No such order, or not the caller's"},
    ),
    Route(
        "POST", "/api/orders", create_order, "Order products, reserving their stock", "orders",
        auth="user",
        body=OrderCreateIn,
        responses={
            201: Response(
                "The new pending order",
                OrderOut,
                ("Location",),
                links=(
                    *id_links("get_order", "update_order", "delete_order"),
                    # Only the order id: the payment method is the client's to choose.
                    Link("create_payment", request_body={"order_id": "$response.body#/id"}),
                ),
            )
        },
        problems={
            409: "Not enough stock for a product (named in detail and product_id), past a hoarding limit "
            "(ORDER_MAX_PENDING_PER_USER, ORDER_MAX_HELD_UNITS_PER_PRODUCT, ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP, "
            "named in `limit`), or a discount "
            "code with no redemptions left or used max_per_customer times by the caller; nothing was reserved",
            422: "Besides the body's shape: an unknown product, mixed currencies, an address that is not the "
            "caller's, a shipping method that is unknown, disabled, in another currency or not shipping to the "
            "address, or a discount code that is unknown, disabled, not started, ended, in another currency or "
            "above the subtotal (`detail` says which)",
            429: _GUESSES,
        },
    ),
    Route(
        "PUT", "/api/orders/{id}", update_order,
        "Change a pending order's items, shipping address, shipping method or discount code, or its status",
        "orders",
        auth="user",
        body=OrderUpdateIn,
        responses={200: Response("The updated order", OrderOut)},
        problems={
            403: "The change needs another role (ship/deliver: admin; items and checkout: the owner)",
            404: "No such order, or not the caller's",
            409: "Not allowed from the current status, payment in progress, not enough stock, past "
            "ORDER_MAX_HELD_UNITS_PER_PRODUCT (named in `limit`), or a discount code with no redemptions left",
            422: "As for creating an order (`detail` says which rule)",
            429: f"{_USER_BUSY}; or {_GUESSES}",
            503: _BUSY,
        },
    ),
    Route(
        "DELETE", "/api/orders/{id}", delete_order, "Delete a pending, cancelled or expired order", "orders",
        auth="user",
        responses={204: Response("Deleted (a pending order's stock was returned first)")},
        problems={
            404: "No such order, or not the caller's",
            409: "Paid, shipped or delivered orders cannot be deleted, or a payment is in progress",
            429: _USER_BUSY,
            503: _BUSY,
        },
    ),
]  # fmt: skip
