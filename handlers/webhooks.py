"""Webhooks: admin CRUD and the delivery log."""

from __future__ import annotations

from aiohttp import web

from handlers.common import context, created, page_response, parse_query, path_id, read_json
from handlers.routing import Response, Route, id_links
from handlers.schemas import Page, PageQuery, WebhookCreateIn, WebhookUpdateIn
from server.domain import webhooks
from server.domain.shapes import DeliveryAttemptOut, WebhookCreatedOut, WebhookOut, render
from server.runtime.jsonio import json_response


async def create_webhook(request: web.Request) -> web.Response:
    body = await read_json(request, WebhookCreateIn)
    row, secret = await webhooks.create(context(request), body.url, body.events, body.description)
    return created(request, "get_webhook", WebhookCreatedOut, {**row, "secret": secret})


async def list_webhooks(request: web.Request) -> web.Response:
    query = parse_query(request, PageQuery)
    return page_response(WebhookOut, await webhooks.page(context(request), query.cursor, query.limit))


async def get_webhook(request: web.Request) -> web.Response:
    return json_response(render(WebhookOut, await webhooks.get(context(request), path_id(request))))


async def update_webhook(request: web.Request) -> web.Response:
    webhook_id = path_id(request)
    body = await read_json(request, WebhookUpdateIn)
    row = await webhooks.update(context(request), webhook_id, body.changes())
    return json_response(render(WebhookOut, row))


async def delete_webhook(request: web.Request) -> web.Response:
    await webhooks.delete(context(request), path_id(request))
    return web.Response(status=204)


async def list_webhook_deliveries(request: web.Request) -> web.Response:
    webhook_id = path_id(request)
    query = parse_query(request, PageQuery)
    page = await webhooks.attempts_page(context(request), webhook_id, query.cursor, query.limit)
    return page_response(DeliveryAttemptOut, page)


_URL_REFUSED = "Not an http(s) URL, or its host resolves to a loopback, private or link-local address"

ROUTES = [
    Route(
        "POST", "/api/webhooks", create_webhook, "Add a webhook (its secret is shown in this answer only)", "webhooks",
        auth="admin",
        body=WebhookCreateIn,
        responses={
            201: Response(
                "The new webhook, with its signing secret",
                WebhookCreatedOut,
                ("Location",),
                links=id_links("get_webhook", "update_webhook", "delete_webhook", "list_webhook_deliveries"),
            )
        },
        problems={422: _URL_REFUSED},
    ),
    Route(
        "GET", "/api/webhooks", list_webhooks, "List webhooks (oldest first)", "webhooks",
        auth="admin",
        query=PageQuery,
        responses={200: Response("A page of webhooks", Page[WebhookOut])},
    ),
    Route(
        "GET", "/api/webhooks/{id}", get_webhook, "One webhook (without its secret)", "webhooks",
        auth="admin",
        responses={200: Response("The webhook", WebhookOut)},
        problems={404: "No such webhook"},
    ),
    Route(
        "PUT", "/api/webhooks/{id}", update_webhook, "Change a webhook (omitted fields unchanged)", "webhooks",
        auth="admin",
        body=WebhookUpdateIn,
        responses={200: Response("The updated webhook", WebhookOut)},
        problems={404: "No such webhook", 422: _URL_REFUSED},
    ),
    Route(
        "DELETE", "/api/webhooks/{id}", delete_webhook, "Remove a webhook and its delivery log", "webhooks",
        auth="admin",
        responses={204: Response("Deleted; nothing more is sent to it")},
        problems={404: "No such webhook"},
    ),
    Route(
        "GET", "/api/webhooks/{id}/deliveries", list_webhook_deliveries, "Delivery attempts, newest first",
        "webhooks",
        auth="admin",
        query=PageQuery,
        responses={200: Response("A page of delivery attempts", Page[DeliveryAttemptOut])},
        problems={404: "No such webhook"},
    ),
]  # fmt: skip
