"""The address book: the caller's own addresses (another's: 404)."""

from __future__ import annotations

from aiohttp import web

from handlers.common import context, created, page_response, parse_query, path_id, principal, read_json
from handlers.routing import Response, Route, id_links
from handlers.schemas import AddressIn, AddressUpdateIn, Page, PageQuery
from server.domain import addresses
from server.domain.shapes import AddressOut, render
from server.runtime.jsonio import json_response


async def list_addresses(request: web.Request) -> web.Response:
    query = parse_query(request, PageQuery)
    page = await addresses.page(context(request), principal(request), query.cursor, query.limit)
    return page_response(AddressOut, page)


async def create_address(request: web.Request) -> web.Response:
    body = await read_json(request, AddressIn)
    row = await addresses.create(context(request), principal(request), body.postal())
    return created(request, "get_address", AddressOut, row)


async def get_address(request: web.Request) -> web.Response:
    row = await addresses.get(context(request), principal(request), path_id(request))
    return json_response(render(AddressOut, row))


async def update_address(request: web.Request) -> web.Response:
    address_id = path_id(request)
    body = await read_json(request, AddressUpdateIn)
    row = await addresses.update(context(request), principal(request), address_id, body.changes())
    return json_response(render(AddressOut, row))


async def delete_address(request: web.Request) -> web.Response:
    await addresses.delete(context(request), principal(request), path_id(request))
    return web.Response(status=204)


_NOT_YOURS = "No such address, or not the caller's"

ROUTES = [
    Route(
        "GET", "/api/users/addresses", list_addresses, "The caller's addresses, oldest first", "users",
        auth="user",
        query=PageQuery,
        responses={200: Response("A page of addresses", Page[AddressOut])},
    ),
    Route(
        "POST", "/api/users/addresses", create_address, "Add an address to the caller's book", "users",
        auth="user",
        body=AddressIn,
        responses={
            201: Response(
                "The new address",
                AddressOut,
                ("Location",),
                links=id_links("get_address", "update_address", "delete_address"),
            )
        },
        problems={409: "The caller has the most addresses allowed (20)"},
    ),
    Route(
        "GET", "/api/users/addresses/{id}", get_address, "One of the caller's addresses", "users",
        auth="user",
        responses={200: Response("The address", AddressOut)},
        problems={404: _NOT_YOURS},
    ),
    Route(
        "PUT", "/api/users/addresses/{id}", update_address, "Change an address (omitted fields unchanged)", "users",
        auth="user",
        body=AddressUpdateIn,
        responses={200: Response("The updated address (orders keep their snapshots)", AddressOut)},
        problems={404: _NOT_YOURS},
    ),
    Route(
        "DELETE", "/api/users/addresses/{id}", delete_address, "Remove an address from the book", "users",
        auth="user",
        responses={204: Response("Deleted (orders keep their snapshots)")},
        problems={404: _NOT_YOURS},
    ),
]  # fmt: skip
