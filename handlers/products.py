"""Products: the public catalog and its admin changes."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from db.products import PRODUCT_COLUMNS, ListFilters
from handlers.common import context, parse_query, path_id, read_json
from handlers.routing import Response, Route, id_links
from handlers.schemas import Page, ProductCreateIn, ProductListQuery, ProductOut, ProductUpdateIn
from server import accounts, catalog
from server.jsonio import json_response

# The row's columns, in order (db.products.PRODUCT_COLUMNS): zipping by position is
# faster than looking each column up by name. zip() is called without `strict`: any
# keyword argument sends it down a slower call path (a quarter more per page), and
# the keys and the SELECT come from the same constant.
_PRODUCT_KEYS = tuple(PRODUCT_COLUMNS.split(", "))


def product_json(row: asyncpg.Record) -> dict[str, Any]:
    return dict(zip(_PRODUCT_KEYS, row))  # noqa: B905


async def list_products(request: web.Request) -> web.Response:
    query = parse_query(request, ProductListQuery)
    filters = ListFilters(query.q, query.min_price, query.max_price, query.in_stock)
    rows, next_cursor = await catalog.list_page(context(request), query.sort, filters, query.cursor, query.limit)
    keys = _PRODUCT_KEYS
    items = [dict(zip(keys, row)) for row in rows]  # noqa: B905
    return json_response({"items": items, "next_cursor": next_cursor})


async def get_product(request: web.Request) -> web.Response:
    row = await catalog.get(context(request), path_id(request))
    return json_response(product_json(row))


async def create_product(request: web.Request) -> web.Response:
    ctx = context(request)
    await accounts.require_admin(ctx, request.headers.get("Authorization"))
    body = await read_json(request, ProductCreateIn)
    row = await catalog.create(ctx, body.model_dump())
    return json_response(product_json(row), status=201, headers={"Location": f"/api/products/{row['id']}"})


async def update_product(request: web.Request) -> web.Response:
    ctx = context(request)
    await accounts.require_admin(ctx, request.headers.get("Authorization"))
    product_id = path_id(request)
    body = await read_json(request, ProductUpdateIn)
    row = await catalog.update(ctx, product_id, body.changes())
    return json_response(product_json(row))


async def delete_product(request: web.Request) -> web.Response:
    ctx = context(request)
    await accounts.require_admin(ctx, request.headers.get("Authorization"))
    await catalog.delete(ctx, path_id(request))
    return web.Response(status=204)


ROUTES = [
    Route(
        "GET", "/api/products", list_products, "List the catalog (keyset pages)", "products",
        query=ProductListQuery,
        responses={200: Response("A page of products", Page[ProductOut])},
    ),
    Route(
        "GET", "/api/products/{id}", get_product, "One product", "products",
        responses={200: Response("The product", ProductOut)},
        problems={404: "No such product (or deleted)"},
    ),
    Route(
        "POST", "/api/products", create_product, "Add a product", "products",
        auth="admin",
        body=ProductCreateIn,
        responses={
            201: Response(
                "The new product",
                ProductOut,
                ("Location",),
                links=id_links("get_product", "update_product", "delete_product"),
            )
        },
        problems={409: "A live product has this sku"},
    ),
    Route(
        "PUT", "/api/products/{id}", update_product, "Change a product (omitted fields unchanged)", "products",
        auth="admin",
        body=ProductUpdateIn,
        responses={200: Response("The updated product", ProductOut)},
        problems={404: "No such product", 409: "A live product has this sku"},
    ),
    Route(
        "DELETE", "/api/products/{id}", delete_product, "Remove a product from the catalog", "products",
        auth="admin",
        responses={204: Response("Deleted; orders that contain it keep their lines")},
        problems={404: "No such product"},
    ),
]  # fmt: skip
