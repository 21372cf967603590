"""Products: the public catalog and its admin changes."""

from __future__ import annotations

from aiohttp import web

from handlers.common import client_ip, context, created, parse_query, path_id, read_json
from handlers.conditional import CACHING_ANSWER_HEADERS, CACHING_HEADERS, cache_control, respond, wants_fresh
from handlers.routing import Response, Route, id_links
from handlers.schemas import Page, ProductCreateIn, ProductListQuery, ProductUpdateIn
from server.domain import catalog, products
from server.domain.shapes import ProductOut, render
from server.runtime.jsonio import json_response


async def list_products(request: web.Request) -> web.Response:
    ctx = context(request)
    query = parse_query(request, ProductListQuery)
    filters = products.ListFilters(query.q, query.min_price, query.max_price, query.in_stock)
    fresh = wants_fresh(request) and catalog.fresh_read_allowed(ctx, client_ip(request, ctx.config))
    entry = await catalog.page(ctx, query.sort, filters, query.cursor, query.limit, fresh)
    return respond(request, entry, cache_control(ctx.config))


async def get_product(request: web.Request) -> web.Response:
    ctx = context(request)
    fresh = wants_fresh(request) and catalog.fresh_read_allowed(ctx, client_ip(request, ctx.config))
    entry = await catalog.product(ctx, path_id(request), fresh)
    return respond(request, entry, cache_control(ctx.config))


async def create_product(request: web.Request) -> web.Response:
    ctx = context(request)
    body = await read_json(request, ProductCreateIn)
    row = await products.create(ctx, body.model_dump())
    return created(request, "get_product", ProductOut, row)


async def update_product(request: web.Request) -> web.Response:
    ctx = context(request)
    product_id = path_id(request)
    body = await read_json(request, ProductUpdateIn)
    row = await products.update(ctx, product_id, body.changes())
    return json_response(render(ProductOut, row))


async def delete_product(request: web.Request) -> web.Response:
    ctx = context(request)
    await products.delete(ctx, path_id(request))
    return web.Response(status=204)


ROUTES = [
    Route(
        "GET", "/api/products", list_products, "List the catalog (keyset pages)", "products",
        auth="optional",
        query=ProductListQuery,
        request_headers=CACHING_HEADERS,
        responses={
            200: Response("A page of products", Page[ProductOut], CACHING_ANSWER_HEADERS),
            304: Response("Not modified: the ETag in If-None-Match is current", None, CACHING_ANSWER_HEADERS),
        },
    ),
    Route(
        "GET", "/api/products/{id}", get_product, "One product", "products",
        auth="optional",
        request_headers=CACHING_HEADERS,
        responses={
            200: Response("The product", ProductOut, CACHING_ANSWER_HEADERS),
            304: Response("Not modified: the ETag in If-None-Match is current", None, CACHING_ANSWER_HEADERS),
        },
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
        responses={204: Response("Deleted; orders that contain it keep their items")},
        problems={404: "No such product"},
    ),
]  # fmt: skip
