"""Shipping methods: anyone reads the enabled ones (admins: all), with an ETag and the
catalog's Cache-Control; admins make and change them."""

from __future__ import annotations

from aiohttp import web

from handlers.common import context, created, maybe_principal, parse_query, path_id, read_json
from handlers.conditional import CACHING_HEADERS, cache_control, respond
from handlers.routing import Response, Route, id_links
from handlers.schemas import Page, PageQuery, ShippingMethodCreateIn, ShippingMethodUpdateIn
from server.domain import shipping
from server.domain.shapes import ShippingMethodOut, render
from server.runtime.jsonio import json_response

# The answer depends on who asks (admins see disabled methods too).
_VARY = {"Vary": "Authorization"}


async def list_shipping_methods(request: web.Request) -> web.Response:
    ctx = context(request)
    query = parse_query(request, PageQuery)
    entry = await shipping.page(ctx, maybe_principal(request), query.cursor, query.limit)
    response = respond(request, entry, cache_control(ctx.config))
    response.headers.update(_VARY)
    return response


async def get_shipping_method(request: web.Request) -> web.Response:
    ctx = context(request)
    entry = await shipping.get(ctx, maybe_principal(request), path_id(request))
    response = respond(request, entry, cache_control(ctx.config))
    response.headers.update(_VARY)
    return response


async def create_shipping_method(request: web.Request) -> web.Response:
    body = await read_json(request, ShippingMethodCreateIn)
    row = await shipping.create(context(request), body.model_dump())
    return created(request, "get_shipping_method", ShippingMethodOut, row)


async def update_shipping_method(request: web.Request) -> web.Response:
    method_id = path_id(request)
    body = await read_json(request, ShippingMethodUpdateIn)
    row = await shipping.update(context(request), method_id, body.changes())
    return json_response(render(ShippingMethodOut, row))


async def delete_shipping_method(request: web.Request) -> web.Response:
    await shipping.delete(context(request), path_id(request))
    return web.Response(status=204)


_CACHED = ("ETag", "Cache-Control")
_NOT_MODIFIED = "Not modified: the ETag in If-None-Match is current"

ROUTES = [
    Route(
        "GET", "/api/shipping-methods", list_shipping_methods,
        "Shipping methods, oldest first: the enabled ones (admins: all)", "checkout",
        auth="optional",
        query=PageQuery,
        request_headers=CACHING_HEADERS,
        responses={
            200: Response("A page of shipping methods", Page[ShippingMethodOut], _CACHED),
            304: Response(_NOT_MODIFIED, None, _CACHED),
        },
    ),
    Route(
        "POST", "/api/shipping-methods", create_shipping_method, "Add a shipping method", "checkout",
        auth="admin",
        body=ShippingMethodCreateIn,
        responses={
            201: Response(
                "The new shipping method",
                ShippingMethodOut,
                ("Location",),
                links=id_links("get_shipping_method", "update_shipping_method", "delete_shipping_method"),
            )
        },
    ),
    Route(
        "GET", "/api/shipping-methods/{id}", get_shipping_method,
        "One shipping method (a disabled one: admins only)", "checkout",
        auth="optional",
        request_headers=CACHING_HEADERS,
        responses={
            200: Response("The shipping method", ShippingMethodOut, _CACHED),
            304: Response(_NOT_MODIFIED, None, _CACHED),
        },
        problems={404: "No such shipping method (or disabled, for anyone but an admin)"},
    ),
    Route(
        "PUT", "/api/shipping-methods/{id}", update_shipping_method,
        "Change a shipping method (omitted fields unchanged)", "checkout",
        auth="admin",
        body=ShippingMethodUpdateIn,
        responses={200: Response("The updated shipping method (orders keep their snapshots)", ShippingMethodOut)},
        problems={404: "No such shipping method"},
    ),
    Route(
        "DELETE", "/api/shipping-methods/{id}", delete_shipping_method, "Remove a shipping method", "checkout",
        auth="admin",
        responses={204: Response("Deleted: no order can choose it (orders keep their snapshots)")},
        problems={404: "No such shipping method"},
    ),
]  # fmt: skip
