"""Orders: create, read, list, change (lines or status) and delete."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from aiohttp import web

from handlers.common import context, parse_query, path_id, read_json
from handlers.routing import Link, Response, Route, id_links
from handlers.schemas import OrderCreateIn, OrderItemIn, OrderListQuery, OrderOut, OrderUpdateIn, Page
from server import accounts, orders
from server.jsonio import json_response

_ITEM_KEYS = ("product_id", "name", "unit_price", "quantity", "line_total")


def order_json(row: asyncpg.Record, items: Sequence[tuple[Any, ...]] | None = None) -> dict[str, Any]:
    lines = row["items"] if items is None else items
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "status": row["status"],
        "items": [dict(zip(_ITEM_KEYS, line, strict=True)) for line in lines],
        "total": row["total"],
        "currency": row["currency"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "expires_at": row["expires_at"],
    }


def _lines(items: list[OrderItemIn]) -> list[tuple[int, int]]:
    return [(item.product_id, item.quantity) for item in items]


async def create_order(request: web.Request) -> web.Response:
    ctx = context(request)
    principal = await accounts.authenticate(ctx, request.headers.get("Authorization"))
    body = await read_json(request, OrderCreateIn)
    row, items = await orders.create(ctx, principal, _lines(body.items))
    return json_response(order_json(row, items), status=201, headers={"Location": f"/api/orders/{row['id']}"})


async def get_order(request: web.Request) -> web.Response:
    ctx = context(request)
    principal = await accounts.authenticate(ctx, request.headers.get("Authorization"))
    row = await orders.get(ctx, principal, path_id(request))
    return json_response(order_json(row))


async def list_orders(request: web.Request) -> web.Response:
    ctx = context(request)
    principal = await accounts.authenticate(ctx, request.headers.get("Authorization"))
    query = parse_query(request, OrderListQuery)
    rows, next_cursor = await orders.list_page(
        ctx, principal, user_id=query.user_id, status=query.status, cursor=query.cursor, limit=query.limit
    )
    return json_response({"items": [order_json(r) for r in rows], "next_cursor": next_cursor})


async def update_order(request: web.Request) -> web.Response:
    ctx = context(request)
    principal = await accounts.authenticate(ctx, request.headers.get("Authorization"))
    order_id = path_id(request)
    body = await read_json(request, OrderUpdateIn)
    if body.items is not None:
        row = await orders.replace_lines(ctx, principal, order_id, _lines(body.items))
    else:
        assert body.status is not None
        row = await orders.change_status(ctx, principal, order_id, body.status)
    return json_response(order_json(row))


async def delete_order(request: web.Request) -> web.Response:
    ctx = context(request)
    principal = await accounts.authenticate(ctx, request.headers.get("Authorization"))
    await orders.delete(ctx, principal, path_id(request))
    return web.Response(status=204)


_BUSY = "Too many commands queued for this order, or shutting down (see Retry-After)"

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
        problems={409: "Not enough stock for a product (named in detail and product_id); nothing was reserved"},
    ),
    Route(
        "PUT", "/api/orders/{id}", update_order, "Replace the lines of a pending order, or change its status", "orders",
        auth="user",
        body=OrderUpdateIn,
        responses={200: Response("The updated order", OrderOut)},
        problems={
            403: "The change needs another role (ship/deliver: admin; lines: the owner)",
            404: "No such order, or not the caller's",
            409: "Not allowed from the current status, payment in progress, or not enough stock",
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
            503: _BUSY,
        },
    ),
]  # fmt: skip
