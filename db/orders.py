"""Orders, their lines, and the stock they hold.

Every function that changes an order is one transaction, and each follows the same
lock order so that concurrent transactions can wait for each other but never
deadlock: first the customer's row (when hold limits are checked), then the order
row(s), then the product rows in ascending id order.
Statuses are checked on the locked rows, so a decision is never made on stale data,
whatever other process changed the order a moment before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

import asyncpg

from db import users as users_db
from db.pool import Database, Executor

ORDER_COLUMNS = (
    "o.id, o.user_id, o.status, o.total, o.amount_refunded, o.currency, o.created_at, o.updated_at, o.expires_at"
)
# The lines of order `o`, as order_line records (sql/015_order_lines.sql): asyncpg
# returns them with their field names.
ITEMS_COLUMN = (
    "ARRAY(SELECT ROW(i.product_id, i.name, i.unit_price, i.quantity, i.line_total)::order_line "
    "FROM order_items i WHERE i.order_id = o.id ORDER BY i.line_no) AS items"
)
Line = tuple[int, int]  # (product_id, quantity)
# Told of every status change inside the transaction that makes it, with the order
# row (ORDER_COLUMNS and ITEMS_COLUMN) as changed: the caller records the event.
Notify = Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[None]]


class OrderNotFound(Exception):
    pass


@dataclass
class StockShort(Exception):
    product_id: int
    name: str
    available: int


@dataclass
class UnknownProducts(Exception):
    product_ids: list[int]


class MixedCurrencies(Exception):
    pass


@dataclass
class WrongStatus(Exception):
    status: str


class PaymentInFlight(Exception):
    pass


class Expired(Exception):
    """The order was pending past its expires_at: it has been expired now."""


class TooManyPending(Exception):
    """The customer holds ORDER_MAX_PENDING_PER_USER pending orders already."""


@dataclass
class TooManyHeld(Exception):
    """The customer's pending orders would hold more units of this product than allowed."""

    product_id: int


@dataclass(frozen=True)
class HoldLimits:
    """What one customer's pending orders may hold (the contract's stock hoarding)."""

    max_pending: int
    max_units_per_product: int


# --- reading ----------------------------------------------------------------------------

_GET = f"""
SELECT {ORDER_COLUMNS}, {ITEMS_COLUMN}
FROM orders o
WHERE o.id = $1 AND o.deleted_at IS NULL AND ($2::bigint IS NULL OR o.user_id = $2)
"""


async def get(db: Executor, order_id: int, owner_id: int | None) -> asyncpg.Record | None:
    """An order with its lines; `owner_id` limits it to that user's orders (None: any)."""
    return await db.fetchrow(_GET, order_id, owner_id)


async def list_page(
    db: Database, *, user_id: int | None, status: str | None, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    """Newest first, up to `limit` + 1 rows (the extra one tells a next page exists)."""
    conditions = ["o.deleted_at IS NULL"]
    args: list[object] = []
    for condition, value in (("o.user_id = ${}", user_id), ("o.status = ${}", status), ("o.id < ${}", before_id)):
        if value is not None:
            args.append(value)
            conditions.append(condition.format(len(args)))
    args.append(limit + 1)
    query = (
        f"SELECT {ORDER_COLUMNS}, {ITEMS_COLUMN} FROM orders o WHERE {' AND '.join(conditions)} "
        f"ORDER BY o.id DESC LIMIT ${len(args)}"
    )
    return await db.fetch(query, *args)


# --- creating ---------------------------------------------------------------------------

# One call, so one round trip: the function (sql/016_order_limits.sql) checks the
# customer's hold limits, then create_order (sql/015_order_lines.sql) prices the lines
# with price_order_lines, the one authority on the line rules, before it writes
# anything; when it places the order it also writes the order's order.created event
# (sql/017_order_created_event.sql). One statement is its own transaction, so the
# caller may pass the pool.
_CREATE = "SELECT placed, lines, refusal FROM create_order_within_limits($1, $2, $3, $4, $5, $6)"


async def create(
    db: Executor, user_id: int, lines: Sequence[Line], ttl_seconds: float, limits: HoldLimits
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """Reserve every line and write the order with its order.created event, or
    change nothing; returns the order and its lines (order_line records).

    `lines` must name each product once. Raises TooManyPending or TooManyHeld (the
    customer's limits), UnknownProducts, MixedCurrencies or StockShort (for the
    first line that cannot be covered).
    """
    row = await db.fetchrow(
        _CREATE,
        user_id,
        [pid for pid, _ in lines],
        [qty for _, qty in lines],
        ttl_seconds,
        limits.max_pending,
        limits.max_units_per_product,
    )
    assert row is not None
    return _placed(row)


def _placed(row: asyncpg.Record) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """The order and lines an order_lines function placed, or the error its named
    refusal stands for."""
    refusal = row["refusal"]
    if refusal is not None:
        raise _REFUSALS[refusal["reason"]](refusal)
    return row["placed"], row["lines"]


_REFUSALS: dict[str, Callable[[asyncpg.Record], Exception]] = {
    "unknown_products": lambda r: UnknownProducts(list(r["product_ids"])),
    "mixed_currencies": lambda r: MixedCurrencies(),
    "short_stock": lambda r: StockShort(r["product_ids"][0], r["product_name"], r["available"]),
    "too_many_pending": lambda r: TooManyPending(),
    "too_many_held": lambda r: TooManyHeld(r["product_ids"][0]),
}


# --- changing ---------------------------------------------------------------------------

_LOCK_ORDER = """
SELECT id, user_id, status, expires_at <= now() AS overdue
FROM orders
WHERE id = $1 AND deleted_at IS NULL AND ($2::bigint IS NULL OR user_id = $2)
FOR UPDATE
"""
# A separate statement after the lock, so that (under READ COMMITTED) it sees a
# payment committed by whoever held the lock before us.
_PAYMENT_IN_FLIGHT = "SELECT EXISTS (SELECT 1 FROM payments WHERE order_id = $1 AND status = 'pending')"

_LOCK_ORDER_PRODUCTS = """
SELECT id FROM products
WHERE id IN (SELECT product_id FROM order_items WHERE order_id = ANY($1::bigint[]))
ORDER BY id
FOR UPDATE
"""
# `p.id = ANY($2)` (the locked products) lets the plan find the rows by primary key.
_RETURN_STOCK = """
UPDATE products p SET stock = p.stock + held.quantity, updated_at = now()
FROM (
    SELECT product_id, sum(quantity) AS quantity FROM order_items
    WHERE order_id = ANY($1::bigint[]) GROUP BY product_id
) held
WHERE p.id = ANY($2::bigint[]) AND p.id = held.product_id
"""
_SET_STATUS = f"""
UPDATE orders o SET status = $2, expires_at = NULL, updated_at = now()
WHERE o.id = $1
RETURNING {ORDER_COLUMNS}, {ITEMS_COLUMN}
"""


async def _lock_pending(conn: asyncpg.Connection, order_id: int, owner_id: int | None) -> asyncpg.Record:
    """Lock an order that must be pending with no payment in flight."""
    order = await conn.fetchrow(_LOCK_ORDER, order_id, owner_id)
    if order is None:
        raise OrderNotFound()
    if order["status"] != "pending":
        raise WrongStatus(order["status"])
    if await conn.fetchval(_PAYMENT_IN_FLIGHT, order_id):
        raise PaymentInFlight()
    return order


async def return_stock(conn: asyncpg.Connection, order_ids: list[int]) -> None:
    """Put every unit of these orders back in stock (inside the caller's transaction,
    which holds the orders' locks): products locked in id order, as everywhere."""
    product_ids = [r["id"] for r in await conn.fetch(_LOCK_ORDER_PRODUCTS, order_ids)]
    await conn.execute(_RETURN_STOCK, order_ids, product_ids)


async def _end_pending(conn: asyncpg.Connection, order_id: int, status: str, notify: Notify) -> asyncpg.Record:
    await return_stock(conn, [order_id])
    row = await conn.fetchrow(_SET_STATUS, order_id, status)
    assert row is not None
    await notify(conn, row)
    return row


async def cancel(db: Database, order_id: int, owner_id: int | None, notify: Notify) -> asyncpg.Record:
    """pending -> cancelled, returning the stock. An order found past its expiry is
    expired instead (and Expired raised)."""
    async with db.transaction() as conn:
        order = await _lock_pending(conn, order_id, owner_id)
        if not order["overdue"]:
            return await _end_pending(conn, order_id, "cancelled", notify)
        await _end_pending(conn, order_id, "expired", notify)
    raise Expired()


async def advance(db: Database, order_id: int, from_status: str, to_status: str, notify: Notify) -> asyncpg.Record:
    """A fulfilment step (paid -> shipped, shipped -> delivered)."""
    async with db.transaction() as conn:
        order = await conn.fetchrow(_LOCK_ORDER, order_id, None)
        if order is None:
            raise OrderNotFound()
        if order["status"] != from_status:
            raise WrongStatus(order["status"])
        row = await conn.fetchrow(_SET_STATUS, order_id, to_status)
        assert row is not None
        await notify(conn, row)
    return row


_REPLACE = "SELECT placed, lines, refusal FROM replace_order_lines($1, $2, $3)"


_HELD_UNITS_OVER = "SELECT held_units_over($1, $2, $3, $4, $5)"


async def replace_lines(
    db: Database, order_id: int, owner_id: int, lines: Sequence[Line], max_units_per_product: int, notify: Notify
) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """Swap a pending order's lines, re-reserving atomically (price_order_lines counts
    what the order held as available to it); on a refusal (or TooManyHeld) nothing
    changes."""
    async with db.transaction() as conn:
        await users_db.lock(conn, owner_id)  # hold limits are checked under it
        order = await _lock_pending(conn, order_id, owner_id)
        if not order["overdue"]:
            product_ids, quantities = [pid for pid, _ in lines], [qty for _, qty in lines]
            over = await conn.fetchval(
                _HELD_UNITS_OVER, owner_id, order_id, product_ids, quantities, max_units_per_product
            )
            if over is not None:
                raise TooManyHeld(over)
            row = await conn.fetchrow(_REPLACE, order_id, product_ids, quantities)
            assert row is not None
            return _placed(row)
        await _end_pending(conn, order_id, "expired", notify)
    raise Expired()


_SOFT_DELETE = "UPDATE orders SET deleted_at = now(), updated_at = now() WHERE id = $1"


async def delete(db: Database, order_id: int, owner_id: int | None, deletable: frozenset[str], notify: Notify) -> str:
    """Hide an order whose status is `deletable` (a pending one is cancelled first,
    returning its stock). Returns the status it had."""
    async with db.transaction() as conn:
        order = await conn.fetchrow(_LOCK_ORDER, order_id, owner_id)
        if order is None:
            raise OrderNotFound()
        status: str = order["status"]
        if status not in deletable:
            raise WrongStatus(status)
        if status == "pending":
            if await conn.fetchval(_PAYMENT_IN_FLIGHT, order_id):
                raise PaymentInFlight()
            await _end_pending(conn, order_id, "cancelled", notify)
        await conn.execute(_SOFT_DELETE, order_id)
    return status


_OWNER = "SELECT user_id FROM orders WHERE id = $1 AND deleted_at IS NULL"


async def owner(db: Database, order_id: int) -> int | None:
    """Whose order this is (None: no such order): asked before a command about the
    order is queued, so that nobody else's requests wait in its queue."""
    value: int | None = await db.fetchval(_OWNER, order_id)
    return value


# --- expiry -----------------------------------------------------------------------------

# Orders past their expiry, oldest first, skipping those another transaction holds
# (it is deciding about them already) and those a live actor here is timing.
_LOCK_DUE = """
SELECT id FROM orders o
WHERE status = 'pending' AND expires_at <= now() AND id <> ALL($1::bigint[])
  AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.status = 'pending')
ORDER BY expires_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
_PAYING = "SELECT DISTINCT order_id FROM payments WHERE order_id = ANY($1::bigint[]) AND status = 'pending'"
_MARK_EXPIRED = f"""
UPDATE orders o SET status = 'expired', expires_at = NULL, updated_at = now()
WHERE o.id = ANY($1::bigint[]) AND o.status = 'pending'
RETURNING {ORDER_COLUMNS}, {ITEMS_COLUMN}
"""


async def expire_due(db: Database, *, exclude: Sequence[int], batch: int, notify: Notify) -> list[int]:
    """Expire up to `batch` due orders and return their stock; returns their ids.

    Safe to run in every process at once: each order is expired exactly once.
    """
    async with db.transaction() as conn:
        due = [r["id"] for r in await conn.fetch(_LOCK_DUE, list(exclude), batch)]
        if not due:
            return []
        paying = {r["order_id"] for r in await conn.fetch(_PAYING, due)}
        due = [order_id for order_id in due if order_id not in paying]
        if not due:
            return []
        await return_stock(conn, due)
        expired = await conn.fetch(_MARK_EXPIRED, due)
        for row in expired:
            await notify(conn, row)
        return [r["id"] for r in expired]


async def expire_one(db: Database, order_id: int, notify: Notify) -> bool:
    """Expire this order if it is due (an actor's timer); False if it was not."""
    async with db.transaction() as conn:
        order = await conn.fetchrow(_LOCK_ORDER, order_id, None)
        if order is None or order["status"] != "pending" or not order["overdue"]:
            return False
        if await conn.fetchval(_PAYMENT_IN_FLIGHT, order_id):
            return False
        await _end_pending(conn, order_id, "expired", notify)
        return True


# --- invariants -------------------------------------------------------------------------

_STOCK_VIOLATIONS = """
SELECT p.id, p.stock_received, p.stock,
       coalesce(h.held, 0) AS held, coalesce(h.sold, 0) AS sold
FROM products p
LEFT JOIN (
    SELECT i.product_id,
           sum(i.quantity) FILTER (WHERE o.status = ANY($1::text[])) AS held,
           sum(i.quantity) FILTER (
               WHERE o.status = ANY($2::text[]) OR (o.status = ANY($3::text[]) AND restocked.order_id IS NULL)
           ) AS sold
    FROM order_items i JOIN orders o ON o.id = i.order_id
    -- A refunded order whose units went back to stock sells nothing (counted once:
    -- one restocking refund per payment, one succeeded payment per order).
    LEFT JOIN (SELECT DISTINCT order_id FROM refunds WHERE restock AND status = 'succeeded') restocked
        ON restocked.order_id = o.id
    GROUP BY i.product_id
) h ON h.product_id = p.id
WHERE p.stock < 0 OR p.stock_received <> p.stock + coalesce(h.held, 0) + coalesce(h.sold, 0)
ORDER BY p.id
"""


async def stock_violations(
    db: Database, holding: Collection[str], sold: Collection[str], sold_unless_restocked: Collection[str]
) -> list[asyncpg.Record]:
    """Products for which stock received != stock + held by orders in a `holding`
    status + sold (orders in a `sold` status, or in a `sold_unless_restocked` one
    whose units no refund returned to stock), or stock < 0. Empty when the stock
    invariant holds."""
    return await db.fetch(_STOCK_VIOLATIONS, list(holding), list(sold), list(sold_unless_restocked))


_UNKNOWN_STATUSES = "SELECT id, status FROM orders WHERE status <> ALL($1::text[]) ORDER BY id"


async def unknown_statuses(db: Database, statuses: Collection[str]) -> list[asyncpg.Record]:
    """Orders whose status is none of `statuses`."""
    return await db.fetch(_UNKNOWN_STATUSES, list(statuses))


_OVERDUE = "SELECT count(*) FROM orders WHERE status = 'pending' AND expires_at < now() - make_interval(secs => $1)"


async def overdue_count(db: Database, grace_seconds: float) -> int:
    """Pending orders more than `grace_seconds` past their expiry."""
    value: int = await db.fetchval(_OVERDUE, grace_seconds)
    return value
