"""Events: what happened, for the shop's other systems (the feed and webhooks).

`emit` is called inside the transaction of the change it reports (see db/events.py
and sql/009_events.sql), with the object as the API returns it at that moment. Not
for order.created: create_order writes that one in SQL, in the statement that places
the order (sql/017_order_created_event.sql), so that creating an order is one round
trip; nor for payment.succeeded, payment.failed and order.paid: settle_payment writes
those, in the statement that settles the payment (sql/019_settle_payment.sql).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from db import events as events_db
from db.pool import Executor
from server.domain.context import Context
from server.runtime.jsonio import dumps
from server.runtime.problems import ValidationFailed

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


async def emit(conn: Executor, event_type: str, data: dict[str, Any]) -> None:
    await events_db.append(conn, event_type, dumps(data).decode())


def resource_of(event_type: str, data: dict[str, Any]) -> str:
    """The resource an event is about, which orders its deliveries: events of one
    resource reach a webhook in the order they happened. Payments and refunds belong
    to their order (so `order.paid` and `payment.succeeded` keep their order too)."""
    if "order_id" in data:
        return f"order:{data['order_id']}"
    kind = event_type.split(".", 1)[0]
    return f"{kind}:{data.get('id', data.get('user_id', ''))}"


def event_json(row: asyncpg.Record) -> dict[str, Any]:
    """An event as the feed and webhooks show it; `data` goes out as stored."""
    return {"id": row["id"], "type": row["type"], "created_at": row["created_at"], "data": orjson.Fragment(row["data"])}


async def feed(
    ctx: Context, cursor: str | None, types: list[str] | None, limit: int
) -> tuple[list[asyncpg.Record], str]:
    """The next events after `cursor`, in feed order, and the cursor to ask with
    next (at the end: the same position, to ask again later)."""
    position = _START
    if cursor is not None:
        try:
            txid, event_id = ctx.cursors.decode("events", cursor)
        except ValidationFailed:
            raise ValidationFailed.field("after", "cursor is invalid or belongs to another query") from None
        position = (int(txid), int(event_id))
    rows = await events_db.feed(ctx.db, position, types, limit)
    if rows:
        position = (rows[-1]["txid"], rows[-1]["id"])
    return rows, ctx.cursors.encode("events", list(position))
