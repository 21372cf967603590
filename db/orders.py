"""Orders and their items: reads, and every change as one call of its stored function
(sql/functions/orders.sql), which locks, checks, changes and writes the change's event
in one round trip, its own transaction.

A row of an order is the `orders` row with its `items` (order_item records), read by
column name; a refusal is raised as the Refusal the function answered.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import asyncpg

from db.addresses import PostalAddress
from db.pool import Database, Executor
from db.refusals import Refusal, refusal_of, refused

Item = tuple[int, int]  # (product_id, quantity)


@dataclass(frozen=True)
class HoldLimits:
    """What one customer's pending orders may hold, and the pending orders placed from
    one client address (the contract's stock hoarding; 0 turns the address's off)."""

    max_pending: int
    max_units_per_product: int
    max_units_per_product_at_address: int


@dataclass(frozen=True)
class Checkout:
    """What an order ships to and with, and the code it redeems (sql/functions/checkout.sql).
    A new order takes every field as it is (None: none). A change of a pending order
    changes only the parts named in `changes` ("address", "method", "discount"), to
    these values (None removes); the others stay as the order has them."""

    address: PostalAddress | None = None
    address_id: int | None = None
    method_id: int | None = None
    discount_code: str | None = None
    changes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class GuessLimit:
    """Unknown discount codes a customer may try per window (0: no limit)."""

    max_unknown: int
    window_seconds: float


NO_CHECKOUT = Checkout()
NO_GUESS_LIMIT = GuessLimit(0, 3600.0)


# --- reading ----------------------------------------------------------------------------

_GET = """
SELECT o.*, order_items_of(o.id) AS items
FROM orders o
WHERE o.id = $1 AND o.deleted_at IS NULL AND ($2::bigint IS NULL OR o.user_id = $2)
"""


async def get(db: Executor, order_id: int, user_id: int | None) -> asyncpg.Record | None:
    """An order with its items; `user_id` limits it to that user's orders (None: any)."""
    return await db.fetchrow(_GET, order_id, user_id)


# Static statements, one per scope, each an index walk from the cursor down (the keyset
# order is the id): a customer's orders ((user_id, id) index), or everyone's.
_CUSTOMER_PAGE = """
SELECT o.*, order_items_of(o.id) AS items
FROM orders o
WHERE o.user_id = $1 AND o.deleted_at IS NULL AND o.id < coalesce($2::bigint, 9223372036854775807)
  AND ($3::text IS NULL OR o.status = $3)
ORDER BY o.id DESC
LIMIT $4
"""
_EVERYONES_PAGE = """
SELECT o.*, order_items_of(o.id) AS items
FROM orders o
WHERE o.deleted_at IS NULL AND o.id < coalesce($1::bigint, 9223372036854775807)
  AND ($2::text IS NULL OR o.status = $2)
ORDER BY o.id DESC
LIMIT $3
"""


async def page(
    db: Database, *, user_id: int | None, status: str | None, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    """Newest first, `limit` rows at most, before `before_id` (the keyset cursor);
    `user_id`: that user's orders (None: everyone's)."""
    if user_id is None:
        return await db.fetch(_EVERYONES_PAGE, before_id, status, limit)
    return await db.fetch(_CUSTOMER_PAGE, user_id, before_id, status, limit)


_OWNER = "SELECT user_id FROM orders WHERE id = $1 AND deleted_at IS NULL"


async def owner(db: Database, order_id: int) -> int | None:
    """Whose order this is (None: no such order): asked before a command about the
    order is queued, so that nobody else's requests wait in its queue."""
    value: int | None = await db.fetchval(_OWNER, order_id)
    return value


# --- changing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewOrder:
    """An order to place: its customer, the client address it comes from, its items
    (each product once), and what it ships to and with and the code it redeems."""

    user_id: int
    client_ip: str
    items: Sequence[Item]
    checkout: Checkout = NO_CHECKOUT


@dataclass(frozen=True)
class OrderTerms:
    """What every new order is placed under: its time to pay, the hold limits, the
    limit on guessed discount codes."""

    ttl_seconds: float
    limits: HoldLimits
    guesses: GuessLimit


_CREATE = """
SELECT (r.changed).*, r.items, r.refusal
FROM create_order($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) r
"""


async def create(db: Executor, order: NewOrder, terms: OrderTerms) -> asyncpg.Record:
    """Reserve every item and write the order with its order.created event, or change
    nothing and raise the refusal (the customer's limits, the item rules, the address's
    limit, then the checkout's: its shipping, then its discount, whose redemption it
    takes)."""
    checkout, limits, guesses = order.checkout, terms.limits, terms.guesses
    row = await db.fetchrow(
        _CREATE,
        order.user_id,
        order.client_ip,
        [pid for pid, _ in order.items],
        [qty for _, qty in order.items],
        terms.ttl_seconds,
        limits.max_pending,
        limits.max_units_per_product,
        limits.max_units_per_product_at_address,
        checkout.address,
        checkout.address_id,
        checkout.method_id,
        checkout.discount_code,
        guesses.max_unknown,
        guesses.window_seconds,
    )
    assert row is not None
    return refused(row)


_CREATE_MANY = """
SELECT (r.changed).*, r.items, r.refusal
FROM create_orders($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) r
"""


async def create_many(db: Executor, orders: Sequence[NewOrder], terms: OrderTerms) -> list[asyncpg.Record | Refusal]:
    """Orders of one item each, placed in one transaction in this order, each as
    `create` would place it after the ones before it: per order, the order, or the
    Refusal it met (nothing written for it)."""
    limits, guesses = terms.limits, terms.guesses
    rows = await db.fetch(
        _CREATE_MANY,
        [order.items[0][0] for order in orders],
        [order.user_id for order in orders],
        [order.client_ip for order in orders],
        [order.items[0][1] for order in orders],
        [order.checkout.address for order in orders],
        [order.checkout.address_id for order in orders],
        [order.checkout.method_id for order in orders],
        [order.checkout.discount_code for order in orders],
        terms.ttl_seconds,
        limits.max_pending,
        limits.max_units_per_product,
        limits.max_units_per_product_at_address,
        guesses.max_unknown,
        guesses.window_seconds,
    )
    assert len(rows) == len(orders)
    return [refusal_of(row) or row for row in rows]


_REPLACE_ITEMS = """
SELECT (r.changed).*, r.items, r.refusal
FROM replace_order_items($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) r
"""


async def replace_items(
    db: Database,
    order_id: int,
    user_id: int,
    items: Sequence[Item] | None,
    limits: HoldLimits,
    checkout: Checkout = NO_CHECKOUT,
    guesses: GuessLimit = NO_GUESS_LIMIT,
) -> asyncpg.Record:
    """Change a pending order (the user's own): swap its items (None: they stay),
    re-reserving atomically, and the parts of its checkout named in
    `checkout.changes`; its shipping and discount are checked and priced again. On a
    refusal nothing changes (but an order found past its expiry is expired)."""
    row = await db.fetchrow(
        _REPLACE_ITEMS,
        order_id,
        user_id,
        None if items is None else [pid for pid, _ in items],
        None if items is None else [qty for _, qty in items],
        limits.max_units_per_product,
        limits.max_units_per_product_at_address,
        "address" in checkout.changes,
        checkout.address,
        checkout.address_id,
        "method" in checkout.changes,
        checkout.method_id,
        "discount" in checkout.changes,
        checkout.discount_code,
        guesses.max_unknown,
        guesses.window_seconds,
    )
    assert row is not None
    return refused(row)


_CANCEL = "SELECT (r.changed).*, r.items, r.refusal FROM cancel_order($1, $2) r"


async def cancel(db: Database, order_id: int, user_id: int | None) -> asyncpg.Record:
    """pending -> cancelled, returning the stock (`user_id`: only that user's order)."""
    row = await db.fetchrow(_CANCEL, order_id, user_id)
    assert row is not None
    return refused(row)


_ADVANCE = "SELECT (r.changed).*, r.items, r.refusal FROM advance_order($1, $2, $3) r"


async def advance(db: Database, order_id: int, from_status: str, to_status: str) -> asyncpg.Record:
    """A fulfilment step (paid -> shipped, shipped -> delivered)."""
    row = await db.fetchrow(_ADVANCE, order_id, from_status, to_status)
    assert row is not None
    return refused(row)


_DELETE = "SELECT previous_status, refusal FROM delete_order($1, $2, $3)"


async def delete(db: Database, order_id: int, user_id: int | None, deletable: Collection[str]) -> str:
    """Hide an order whose status is `deletable` (a pending one is cancelled first,
    returning its stock). Returns the status it had."""
    row = await db.fetchrow(_DELETE, order_id, user_id, list(deletable))
    assert row is not None
    status: str = refused(row)["previous_status"]
    return status


# --- expiry -----------------------------------------------------------------------------

_EXPIRE = "SELECT expire_order($1)"


async def expire(db: Executor, order_id: int) -> bool:
    """Expire this order if it is due (an actor's timer, or a payment that found it
    overdue); False if it was not."""
    expired: bool = await db.fetchval(_EXPIRE, order_id)
    return expired


_EXPIRE_DUE = "SELECT expire_due_orders($1, $2) AS id"


async def expire_due(db: Database, *, exclude: Sequence[int], batch: int) -> list[int]:
    """Expire up to `batch` due orders and return their stock; returns their ids. Safe
    to run in every process at once: each order is expired exactly once."""
    return [r["id"] for r in await db.fetch(_EXPIRE_DUE, list(exclude), batch)]


# --- invariants -------------------------------------------------------------------------

_STOCK_VIOLATIONS = """
SELECT p.id, p.stock_received, p.stock,
       coalesce(h.held, 0) AS held, coalesce(h.sold, 0) AS sold
FROM products p
LEFT JOIN (
    SELECT i.product_id,
           sum(i.quantity) FILTER (WHERE o.status = ANY($1::text[])) AS held,
           sum(i.quantity) FILTER (
               WHERE (o.status = ANY($2::text[]) OR o.status = ANY($3::text[])) AND restocked.order_id IS NULL
           ) AS sold
    FROM order_items i JOIN orders o ON o.id = i.order_id
    -- A refunded order whose units went back to stock sells nothing (counted once:
    -- units are restocked once per payment, one succeeded payment per order). Units a
    -- restocking refund returned stay in stock when that refund fails afterwards at the
    -- provider (the order is then back in a sold status, and sells nothing either).
    LEFT JOIN (SELECT DISTINCT order_id FROM refunds WHERE restocked) restocked
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


# Each hold counter against a recount from the pending orders (a key missing on either
# side counts as 0): the rows that differ, as (counter, key, kept, counted).
_HOLD_VIOLATIONS = """
WITH pending AS (
    SELECT o.user_id, o.client_ip, i.product_id, i.quantity, i.line_no
    FROM orders o JOIN order_items i ON i.order_id = o.id
    WHERE o.status = 'pending' AND o.deleted_at IS NULL
)
SELECT 'customer_pending_orders' AS counter, coalesce(k.user_id, c.user_id)::text AS key,
       coalesce(k.orders, 0) AS kept, coalesce(c.orders, 0) AS counted
FROM customer_pending_orders k
FULL JOIN (SELECT user_id, count(*) FILTER (WHERE line_no = 1) AS orders FROM pending GROUP BY user_id) c
    ON c.user_id = k.user_id
WHERE coalesce(k.orders, 0) <> coalesce(c.orders, 0)
UNION ALL
SELECT 'customer_holds', coalesce(k.user_id, c.user_id) || '/' || coalesce(k.product_id, c.product_id),
       coalesce(k.units, 0), coalesce(c.units, 0)
FROM customer_holds k
FULL JOIN (SELECT user_id, product_id, sum(quantity) AS units FROM pending GROUP BY user_id, product_id) c
    ON c.user_id = k.user_id AND c.product_id = k.product_id
WHERE coalesce(k.units, 0) <> coalesce(c.units, 0)
UNION ALL
SELECT 'address_holds', coalesce(k.client_ip, c.client_ip) || '/' || coalesce(k.product_id, c.product_id),
       coalesce(k.units, 0), coalesce(c.units, 0)
FROM address_holds k
FULL JOIN (SELECT client_ip, product_id, sum(quantity) AS units FROM pending
           WHERE client_ip IS NOT NULL GROUP BY client_ip, product_id) c
    ON c.client_ip = k.client_ip AND c.product_id = k.product_id
WHERE coalesce(k.units, 0) <> coalesce(c.units, 0)
ORDER BY 1, 2
"""


async def hold_violations(db: Executor) -> list[asyncpg.Record]:
    """Hold counters (pending orders per customer, units held per customer and per
    client address and product) that differ from a recount of the pending orders."""
    return await db.fetch(_HOLD_VIOLATIONS)
