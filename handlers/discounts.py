"""Discount codes: admin CRUD (orders redeem them: handlers/orders.py)."""

from __future__ import annotations

from aiohttp import web

from handlers.common import context, created, page_response, parse_query, path_id, read_json
from handlers.routing import Response, Route, id_links
from handlers.schemas import DiscountCreateIn, DiscountUpdateIn, Page, PageQuery
from server.domain import discounts
from server.domain.shapes import DiscountOut, render
from server.runtime.jsonio import json_response


async def list_discounts(request: web.Request) -> web.Response:
    query = parse_query(request, PageQuery)
    return page_response(DiscountOut, await discounts.page(context(request), query.cursor, query.limit))


async def create_discount(request: web.Request) -> web.Response:
    body = await read_json(request, DiscountCreateIn)
    row = await discounts.create(context(request), body.model_dump())
    return created(request, "get_discount", DiscountOut, row)


async def get_discount(request: web.Request) -> web.Response:
    return json_response(render(DiscountOut, await discounts.get(context(request), path_id(request))))


async def update_discount(request: web.Request) -> web.Response:
    discount_id = path_id(request)
    body = await read_json(request, DiscountUpdateIn)
    row = await discounts.update(context(request), discount_id, body.changes())
    return json_response(render(DiscountOut, row))


async def delete_discount(request: web.Request) -> web.Response:
    await discounts.delete(context(request), path_id(request))
    return web.Response(status=204)


_INVALID = "A percent discount's value above 100, or ends_at not after starts_at (see `errors`)"

ROUTES = [
    Route(
        "GET", "/api/discounts", list_discounts, "Discount codes, oldest first", "checkout",
        auth="admin",
        query=PageQuery,
        responses={200: Response("A page of discounts", Page[DiscountOut])},
    ),
    Route(
        "POST", "/api/discounts", create_discount, "Add a discount code", "checkout",
        auth="admin",
        body=DiscountCreateIn,
        responses={
            201: Response(
                "The new discount",
                DiscountOut,
                ("Location",),
                links=id_links("get_discount", "update_discount", "delete_discount"),
            )
        },
        problems={409: "A discount with this code exists", 422: _INVALID},
    ),
    Route(
        "GET", "/api/discounts/{id}", get_discount, "One discount code", "checkout",
        auth="admin",
        responses={200: Response("The discount", DiscountOut)},
        problems={404: "No such discount"},
    ),
    Route(
        "PUT", "/api/discounts/{id}", update_discount, "Change a discount (omitted fields unchanged; not its code)",
        "checkout",
        auth="admin",
        body=DiscountUpdateIn,
        responses={200: Response("The updated discount", DiscountOut)},
        problems={
            404: "No such discount",
            409: "max_redemptions below the redemptions the code already has",
            422: _INVALID,
        },
    ),
    Route(
        "DELETE", "/api/discounts/{id}", delete_discount, "Delete a discount code", "checkout",
        auth="admin",
        responses={204: Response("Deleted: the code is unknown from now on; orders keep their discount")},
        problems={404: "No such discount"},
    ),
]  # fmt: skip
