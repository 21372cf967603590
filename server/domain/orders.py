"""Orders: creation, reads, and the commands that run in each order's actor."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import asyncpg

from db import orders as orders_db
from db.pool import Database
from server.domain import order_status
from server.domain.auth import Principal
from server.domain.context import Context
from server.domain.events import emit
from server.domain.order_actors import OrderActor
from server.runtime.metrics import Metrics
from server.runtime.problems import Conflict, Forbidden, NotFound, ValidationFailed

log = logging.getLogger(__name__)

# Most units of one product an order may hold (the request schema's bound too).
MAX_QUANTITY = 1000


def order_json(row: asyncpg.Record, items: Sequence[asyncpg.Record] | None = None) -> dict[str, Any]:
    """An order as the API shows it: `row` has the order's columns and, unless
    `items` are given, its lines as `items` (order_line records, read by name).
    sql/017_order_created_event.sql's order_json builds the same in SQL for the
    order.created event: keep the two in step (tests/test_events.py compares them)."""
    lines = row["items"] if items is None else items
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "status": row["status"],
        "items": [dict(line.items()) for line in lines],
        "total": row["total"],
        "amount_refunded": row["amount_refunded"],
        "currency": row["currency"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "expires_at": row["expires_at"],
    }


async def notify_status(conn: asyncpg.Connection, order: asyncpg.Record) -> None:
    """The event of a status change, in its transaction: the type is named after the
    new status (order.cancelled, order.expired, order.shipped, ...)."""
    await emit(conn, f"order.{order['status']}", order_json(order))


def merge_lines(items: Sequence[tuple[int, int]]) -> tuple[list[orders_db.Line], dict[int, int]]:
    """Merge lines that name the same product (quantities add up), keeping the order
    of first appearance. Returns the lines and, per product, the index of its first
    line in the request (to name fields in errors). A merged quantity above the
    per-line maximum is a 422."""
    quantities: dict[int, int] = {}
    first_index: dict[int, int] = {}
    for index, (product_id, quantity) in enumerate(items):
        first_index.setdefault(product_id, index)
        quantities[product_id] = quantities.get(product_id, 0) + quantity
    too_many = [pid for pid, qty in quantities.items() if qty > MAX_QUANTITY]
    if too_many:
        raise ValidationFailed(
            [
                {
                    "field": f"items[{first_index[pid]}].quantity",
                    "message": f"at most {MAX_QUANTITY} in total per product",
                }
                for pid in too_many
            ]
        )
    return list(quantities.items()), first_index


@contextmanager
def _order_errors(first_index: dict[int, int] | None = None) -> Iterator[None]:
    """Turn the data layer's refusals into API errors."""
    try:
        yield
    except orders_db.OrderNotFound:
        raise NotFound("no such order") from None
    except orders_db.WrongStatus as exc:
        raise Conflict(f"the order is {exc.status}; that change is not allowed") from None
    except orders_db.PaymentInFlight:
        raise Conflict("a payment for this order is in progress") from None
    except orders_db.Expired:
        raise Conflict("the order has expired") from None
    except orders_db.StockShort as exc:
        raise Conflict(
            f"not enough stock for product {exc.product_id} ({exc.name}): {exc.available} available",
            extra={"product_id": exc.product_id},
        ) from None
    except orders_db.UnknownProducts as exc:
        index = first_index or {}
        raise ValidationFailed(
            [
                {"field": f"items[{index.get(pid, 0)}].product_id", "message": "no such product"}
                for pid in exc.product_ids
            ]
        ) from None
    except orders_db.MixedCurrencies:
        raise ValidationFailed.field("items", "all products of an order must have the same currency") from None
    except orders_db.TooManyPending:
        raise Conflict(
            "you hold the most pending orders allowed (ORDER_MAX_PENDING_PER_USER); pay or cancel one first",
            extra={"limit": "ORDER_MAX_PENDING_PER_USER"},
        ) from None
    except orders_db.TooManyHeld as exc:
        raise Conflict(
            f"your pending orders would hold more units of product {exc.product_id} than allowed "
            "(ORDER_MAX_HELD_UNITS_PER_PRODUCT)",
            extra={"limit": "ORDER_MAX_HELD_UNITS_PER_PRODUCT", "product_id": exc.product_id},
        ) from None


async def create(
    ctx: Context, principal: Principal, items: Sequence[tuple[int, int]]
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """A new pending order holding its stock, and its order.created event; returns
    the order and its lines."""
    lines, first_index = merge_lines(items)
    limits = orders_db.HoldLimits(ctx.config.order_max_pending_per_user, ctx.config.order_max_held_units_per_product)
    # One statement, so its own transaction and one round trip: it writes the
    # order.created event too (sql/017_order_created_event.sql).
    with _order_errors(first_index):
        order, order_items = await orders_db.create(ctx.db, principal.id, lines, ctx.config.order_ttl_seconds, limits)
    ctx.metrics.order_transition("new", "pending")
    return order, order_items


def _owner_filter(principal: Principal) -> int | None:
    """Admins see every order; anyone else only their own (others' are 404)."""
    return None if principal.is_admin else principal.id


async def get(ctx: Context, principal: Principal, order_id: int) -> asyncpg.Record:
    order = await orders_db.get(ctx.db, order_id, _owner_filter(principal))
    if order is None:
        raise NotFound("no such order")
    return order


async def list_page(
    ctx: Context, principal: Principal, *, user_id: int | None, status: str | None, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    if not principal.is_admin:
        if user_id is not None and user_id != principal.id:
            raise Forbidden("only admins may list other users' orders")
        user_id = principal.id
    scope = f"orders:{user_id}:{status}"
    before_id = None
    if cursor is not None:
        (before_id,) = ctx.cursors.decode(scope, cursor)
    rows = await orders_db.list_page(ctx.db, user_id=user_id, status=status, before_id=before_id, limit=limit)
    next_cursor = ctx.cursors.encode(scope, [rows[limit - 1]["id"]]) if len(rows) > limit else None
    return rows[:limit], next_cursor


# --- commands: each runs in the order's actor -------------------------------------------
# A command is authorized before it is queued: a request about an order its caller may
# not see is answered 404 at once and never waits in (or fills) that order's mailbox.


async def authorize(ctx: Context, principal: Principal, order_id: int) -> int:
    """The order's owner, when the caller may see the order (its owner, or an admin);
    404 otherwise, without revealing that it exists."""
    owner = await orders_db.owner(ctx.db, order_id)
    if owner is None or not (principal.is_admin or owner == principal.id):
        raise NotFound("no such order")
    return owner


async def replace_lines(
    ctx: Context, principal: Principal, order_id: int, items: Sequence[tuple[int, int]]
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """The order with its new lines, and the lines."""
    if await authorize(ctx, principal, order_id) != principal.id:
        raise Forbidden("only the order's owner may change its lines")
    lines, first_index = merge_lines(items)
    max_units = ctx.config.order_max_held_units_per_product

    async def command(actor: OrderActor) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
        with _order_errors(first_index):
            order, order_lines = await orders_db.replace_lines(
                ctx.db, order_id, principal.id, lines, max_units, notify_status
            )
        actor.note_expiry(order["expires_at"])
        return order, order_lines

    return await ctx.supervisor.ask(order_id, command, user_id=principal.id)


async def change_status(ctx: Context, principal: Principal, order_id: int, target: str) -> asyncpg.Record:
    role = "admin" if principal.is_admin else "owner"
    allowed = order_status.may_request(target, role)
    if allowed is None:
        raise Conflict(f"an order cannot be set to {target} through the API")
    owner = _owner_filter(principal)
    # 404 rather than 403 for someone else's order: do not reveal it exists.
    await authorize(ctx, principal, order_id)
    if not allowed:
        raise Forbidden(f"only an admin may set an order to {target}")
    from_status = order_status.required_status(target)

    async def command(actor: OrderActor) -> asyncpg.Record:
        with _order_errors():
            if target == "cancelled":
                order = await orders_db.cancel(ctx.db, order_id, owner, notify_status)
            else:
                order = await orders_db.advance(ctx.db, order_id, from_status, target, notify_status)
        actor.note_expiry(None)
        ctx.metrics.order_transition(from_status, target)
        return order

    return await ctx.supervisor.ask(order_id, command, user_id=principal.id)


async def delete(ctx: Context, principal: Principal, order_id: int) -> None:
    owner = _owner_filter(principal)
    await authorize(ctx, principal, order_id)

    async def command(actor: OrderActor) -> None:
        with _order_errors():
            status = await orders_db.delete(ctx.db, order_id, owner, order_status.DELETABLE, notify_status)
        actor.note_expiry(None)
        if status == "pending":
            ctx.metrics.order_transition("pending", "cancelled")

    await ctx.supervisor.ask(order_id, command, user_id=principal.id)


async def expire(db: Database, metrics: Metrics, order_id: int) -> bool:
    """An actor's expiry timer fired (runs inside that actor). Takes the pool and the
    metrics rather than the Context, which holds the supervisor that calls this."""
    expired = await orders_db.expire_one(db, order_id, notify_status)
    if expired:
        metrics.order_transition("pending", "expired")
        log.info("order expired", extra={"order_id": order_id})
    return expired


async def sweep_expired(ctx: Context) -> int:
    """Expire due orders that no live actor here is timing; returns how many."""
    total = 0
    while True:
        expired = await orders_db.expire_due(
            ctx.db, exclude=ctx.supervisor.live_order_ids(), batch=ctx.config.order_sweep_batch, notify=notify_status
        )
        total += len(expired)
        if expired:
            ctx.metrics.order_transition("pending", "expired", len(expired))
            log.info("orders expired by sweeper", extra={"count": len(expired)})
        if len(expired) < ctx.config.order_sweep_batch:
            return total
