"""The event feed: every event once, in order, to a client following next_cursor."""

from __future__ import annotations

from aiohttp import web

from handlers.common import context, parse_query
from handlers.routing import Response, Route
from handlers.schemas import EventPage, EventsQuery
from server.domain import events
from server.domain.events import EVENT_TYPES
from server.domain.shapes import event_json
from server.runtime.jsonio import json_response
from server.runtime.problems import ValidationFailed


def _types(request: web.Request) -> list[str] | None:
    """`type`, repeated or comma-separated (or both); None: every type."""
    types = [t.strip() for value in request.rel_url.query.getall("type", []) for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise ValidationFailed.field("type", f"unknown event types: {', '.join(unknown)}")
    return list(dict.fromkeys(types)) or None


async def list_events(request: web.Request) -> web.Response:
    query = parse_query(request, EventsQuery)
    rows, next_cursor = await events.feed(context(request), query.after, _types(request), query.limit)
    items = [event_json(row["id"], row["type"], row["created_at"], row["data"]) for row in rows]
    return json_response({"items": items, "next_cursor": next_cursor})


ROUTES = [
    Route(
        "GET", "/api/events", list_events, "Events, oldest first (follow next_cursor)", "events",
        auth="admin",
        query=EventsQuery,
        responses={200: Response("A page of events", EventPage)},
    ),
]  # fmt: skip
