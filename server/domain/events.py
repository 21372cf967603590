"""Events: what happened, for the shop's other systems (the feed and webhooks).

Events are written by the stored functions that make the changes, in their
transactions (`emit_event`, sql/functions/events.sql), with the changed resource as its
row; the feed and webhook deliveries show each one's data rendered with the shape of
its type (server/domain/shapes.py), as the API shows that resource.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from db import events as events_db
from db.refusals import Refusal
from server.domain.context import Context

# Every type the contract names (webhooks subscribe to these, or to "*").
EVENT_TYPES = (
    "order.created",
    "order.paid",
    "order.cancelled",
    "order.expired",
    "order.shipped",
    "order.delivered",
    "order.refunded",
    "payment.succeeded",
    "payment.failed",
    "refund.succeeded",
    "refund.failed",
    "product.created",
    "product.updated",
    "product.deleted",
    "user.password_reset_requested",
)
_START = (0, 0)


def resource_of(event_type: str, data: dict[str, Any]) -> str:
    """The resource an event is about, which orders its deliveries: events of one
    resource reach a webhook in the order they happened. Payments and refunds belong
    to their order (so `order.paid` and `payment.succeeded` keep their order too)."""
    if "order_id" in data:
        return f"order:{data['order_id']}"
    kind = event_type.split(".", 1)[0]
    return f"{kind}:{data.get('id', data.get('user_id', ''))}"


async def feed(
    ctx: Context, cursor: str | None, types: list[str] | None, limit: int
) -> tuple[list[asyncpg.Record], str]:
    """The next events after `cursor`, in feed order, and the cursor to ask with
    next (at the end: the same position, to ask again later)."""
    position = _START
    if cursor is not None:
        try:
            txid, event_id = ctx.cursors.decode("events", cursor)
        except Refusal:
            raise Refusal("cursor_invalid", field="after") from None
        position = (int(txid), int(event_id))
    rows = await events_db.feed(ctx.db, position, types, limit)
    if rows:
        position = (rows[-1]["txid"], rows[-1]["id"])
    return rows, ctx.cursors.encode("events", list(position))
