"""Orders, their lines, and the stock they hold.

Every function that changes an order is one transaction, and each follows the same
lock order so that concurrent transactions can wait for each other but never
deadlock: first the order row(s), then the product rows in ascending id order.
Statuses are checked on the locked rows, so a decision is never made on stale data,
whatever other process changed the order a moment before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from db.pool import Database

ORDER_COLUMNS = (
    "o.id, o.user_id, o.status, o.total, o.amount_refunded, o.currency, o.created_at, o.updated_at, o.expires_at"
)
# The lines of order `o`, as (product_id, name, unit_price, quantity, line_total) tuples.
ITEMS_COLUMN = (
    "ARRAY(SELECT ROW(i.product_id, i.name, i.unit_price, i.quantity, i.line_total) "
    "FROM order_items i WHERE i.order_id = o.id ORDER BY i.line_no) AS items"
)
Line = tuple[int, int]  # (product_id, quantity)


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


# --- reading ----------------------------------------------------------------------------

_GET = f"""
SELECT {ORDER_COLUMNS}, {ITEMS_COLUMN}
FROM orders o
WHERE o.id = $1 AND o.deleted_at IS NULL AND ($2::bigint IS NULL OR o.user_id = $2)
"""


async def get(db: Database, order_id: int, owner_id: int | None) -> asyncpg.Record | None:
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

_LOCK_PRODUCTS = """
SELECT id, name, price, currency, stock, deleted_at IS NOT NULL AS deleted
FROM products WHERE id = ANY($1::bigint[])
ORDER BY id
FOR UPDATE
"""

# One call, so one round trip: the function (sql/006_create_order.sql) locks the
# products in id order and checks every line before it writes anything.
_CREATE = "SELECT placed, checked FROM create_order($1, $2, $3, $4)"


@dataclass(frozen=True)
class PricedLine:
    product_id: int
    name: str
    unit_price: int
    quantity: int

    @property
    def line_total(self) -> int:
        return self.unit_price * self.quantity


def _price_lines(
    products: Sequence[asyncpg.Record], lines: Sequence[Line], held: dict[int, int]
) -> tuple[list[PricedLine], str]:
    """Check `lines` against the locked product rows (stock plus what the order
    already `held` of each) and snapshot name and price."""
    by_id = {p["id"]: p for p in products}
    unknown = [pid for pid, _ in lines if pid not in by_id or by_id[pid]["deleted"]]
    if unknown:
        raise UnknownProducts(unknown)
    currencies = {by_id[pid]["currency"] for pid, _ in lines}
    if len(currencies) > 1:
        raise MixedCurrencies()
    priced = []
    for pid, quantity in lines:
        product = by_id[pid]
        available = product["stock"] + held.get(pid, 0)
        if available < quantity:
            raise StockShort(pid, product["name"], available)
        priced.append(PricedLine(pid, product["name"], product["price"], quantity))
    return priced, currencies.pop()


def _line_arrays(priced: Sequence[PricedLine]) -> tuple[list[int], list[int], list[str], list[int]]:
    return (
        [p.product_id for p in priced],
        [p.quantity for p in priced],
        [p.name for p in priced],
        [p.unit_price for p in priced],
    )


Item = tuple[int, str, int, int, int]  # (product_id, name, unit_price, quantity, line_total)


async def create(
    db: Database, user_id: int, lines: Sequence[Line], ttl_seconds: int
) -> tuple[asyncpg.Record, list[Item]]:
    """Reserve every line and write the order, or change nothing; returns the order
    and its lines.

    `lines` must name each product once. Raises UnknownProducts, MixedCurrencies or
    StockShort (for the first line that cannot be covered).
    """
    row = await db.fetchrow(_CREATE, user_id, [pid for pid, _ in lines], [qty for _, qty in lines], ttl_seconds)
    assert row is not None
    order, checked = row["placed"], row["checked"]
    if order is None:
        _refuse(lines, {line[0]: line for line in checked})
    return order, [(pid, name, price, qty, price * qty) for pid, name, price, qty, _, _ in checked]


def _refuse(lines: Sequence[Line], found: dict[int, tuple[Any, ...]]) -> None:
    """Raise why the order was refused (the checks of _CREATE, in the same order)."""
    unknown = [pid for pid, _ in lines if pid not in found]
    if unknown:
        raise UnknownProducts(unknown)
    if len({line[5] for line in found.values()}) > 1:
        raise MixedCurrencies()
    for pid, quantity in lines:
        _, name, _, _, stock, _ = found[pid]
        if stock < quantity:
            raise StockShort(pid, name, stock)
    raise AssertionError("an order was refused for no reason the checks know")


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


async def _end_pending(conn: asyncpg.Connection, order_id: int, status: str) -> asyncpg.Record:
    await return_stock(conn, [order_id])
    row = await conn.fetchrow(_SET_STATUS, order_id, status)
    assert row is not None
    return row


async def cancel(db: Database, order_id: int, owner_id: int | None) -> asyncpg.Record:
    """pending -> cancelled, returning the stock. An order found past its expiry is
    expired instead (and Expired raised)."""
    async with db.transaction() as conn:
        order = await _lock_pending(conn, order_id, owner_id)
        if not order["overdue"]:
            return await _end_pending(conn, order_id, "cancelled")
        await _end_pending(conn, order_id, "expired")
    raise Expired()


async def advance(db: Database, order_id: int, from_status: str, to_status: str) -> asyncpg.Record:
    """A fulfilment step (paid -> shipped, shipped -> delivered)."""
    async with db.transaction() as conn:
        order = await conn.fetchrow(_LOCK_ORDER, order_id, None)
        if order is None:
            raise OrderNotFound()
        if order["status"] != from_status:
            raise WrongStatus(order["status"])
        row = await conn.fetchrow(_SET_STATUS, order_id, to_status)
    assert row is not None
    return row


_OLD_LINES = "SELECT product_id, quantity FROM order_items WHERE order_id = $1"
_APPLY_STOCK_DELTAS = """
UPDATE products p SET stock = p.stock + d.delta, updated_at = now()
FROM unnest($1::bigint[], $2::int[]) AS d (product_id, delta)
WHERE p.id = ANY($1::bigint[]) AND p.id = d.product_id AND d.delta <> 0
"""
_DELETE_LINES = "DELETE FROM order_items WHERE order_id = $1"
_INSERT_LINES = """
INSERT INTO order_items (order_id, line_no, product_id, name, unit_price, quantity, line_total)
SELECT $1, l.line_no, l.product_id, l.name, l.unit_price, l.quantity, l.unit_price * l.quantity
FROM unnest($2::bigint[], $3::int[], $4::text[], $5::bigint[])
    WITH ORDINALITY AS l (product_id, quantity, name, unit_price, line_no)
"""
_SET_TOTAL = f"""
UPDATE orders o SET total = $2, currency = $3, updated_at = now()
WHERE o.id = $1
RETURNING {ORDER_COLUMNS}, {ITEMS_COLUMN}
"""


async def replace_lines(db: Database, order_id: int, owner_id: int, lines: Sequence[Line]) -> asyncpg.Record:
    """Swap a pending order's lines, re-reserving atomically: what the order held
    counts as available to it; on StockShort nothing changes."""
    async with db.transaction() as conn:
        order = await _lock_pending(conn, order_id, owner_id)
        if not order["overdue"]:
            return await _replace_lines(conn, order_id, lines)
        await _end_pending(conn, order_id, "expired")
    raise Expired()


async def _replace_lines(conn: asyncpg.Connection, order_id: int, lines: Sequence[Line]) -> asyncpg.Record:
    held = {r["product_id"]: r["quantity"] for r in await conn.fetch(_OLD_LINES, order_id)}
    product_ids = sorted(held.keys() | {pid for pid, _ in lines})
    products = await conn.fetch(_LOCK_PRODUCTS, product_ids)
    priced, currency = _price_lines(products, lines, held)
    wanted = {p.product_id: p.quantity for p in priced}
    deltas = [held.get(pid, 0) - wanted.get(pid, 0) for pid in product_ids]
    await conn.execute(_APPLY_STOCK_DELTAS, product_ids, deltas)
    await conn.execute(_DELETE_LINES, order_id)
    await conn.execute(_INSERT_LINES, order_id, *_line_arrays(priced))
    row = await conn.fetchrow(_SET_TOTAL, order_id, sum(p.line_total for p in priced), currency)
    assert row is not None
    return row


_SOFT_DELETE = "UPDATE orders SET deleted_at = now(), updated_at = now() WHERE id = $1"


async def delete(db: Database, order_id: int, owner_id: int | None, deletable: frozenset[str]) -> str:
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
            await _end_pending(conn, order_id, "cancelled")
        await conn.execute(_SOFT_DELETE, order_id)
    return status


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
_MARK_EXPIRED = """
UPDATE orders SET status = 'expired', expires_at = NULL, updated_at = now()
WHERE id = ANY($1::bigint[]) AND status = 'pending'
RETURNING id
"""


async def expire_due(db: Database, *, exclude: Sequence[int], batch: int) -> list[int]:
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
        return [r["id"] for r in await conn.fetch(_MARK_EXPIRED, due)]


async def expire_one(db: Database, order_id: int) -> bool:
    """Expire this order if it is due (an actor's timer); False if it was not."""
    async with db.transaction() as conn:
        order = await conn.fetchrow(_LOCK_ORDER, order_id, None)
        if order is None or order["status"] != "pending" or not order["overdue"]:
            return False
        if await conn.fetchval(_PAYMENT_IN_FLIGHT, order_id):
            return False
        await _end_pending(conn, order_id, "expired")
        return True


# --- invariants -------------------------------------------------------------------------

_STOCK_VIOLATIONS = """
SELECT p.id, p.stock_received, p.stock,
       coalesce(h.held, 0) AS held, coalesce(h.sold, 0) AS sold
FROM products p
LEFT JOIN (
    SELECT i.product_id,
           sum(i.quantity) FILTER (WHERE o.status = 'pending') AS held,
           sum(i.quantity) FILTER (
               WHERE o.status IN ('paid', 'shipped', 'delivered')
                  OR (o.status = 'refunded' AND restocked.order_id IS NULL)
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


async def stock_violations(db: Database) -> list[asyncpg.Record]:
    """Products for which stock received != stock + held by pending orders + sold
    (paid, shipped, delivered, or refunded without restocking), or stock < 0. Empty
    when the stock invariant holds."""
    return await db.fetch(_STOCK_VIOLATIONS)
