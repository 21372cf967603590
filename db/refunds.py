"""Refunds: the three steps of a refund, its reads, reconciliation, and the refund
invariants.

Lock order, as for charges: the payment row, then the refund, then the order, then
the products in id order (db/orders.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from db.liveness import claim_stale_sql
from db.orders import ITEMS_COLUMN, ORDER_COLUMNS, return_stock
from db.pool import Database, Executor

REFUND_COLUMNS = (
    "id, payment_id, order_id, amount, currency, status, reason, restock, failure_reason, provider_ref, created_at"
)


# --- step 1 -------------------------------------------------------------------------------

# The payment, locked: its refund counters are read and changed under this lock, so
# two transactions (in any processes) never both take the same part of it.
_LOCK_PAYMENT = """
SELECT id, order_id, status, amount, amount_refunded, amount_refund_pending, currency, provider_ref
FROM payments WHERE id = $1
FOR UPDATE
"""


async def lock_payment(conn: Executor, payment_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(_LOCK_PAYMENT, payment_id)


# Reserve the amount on the payment (its CHECK constraint is the ceiling's last
# guard) and record the pending refund, in one statement.
_BEGIN = f"""
WITH reserved AS (
    UPDATE payments SET amount_refund_pending = amount_refund_pending + $2, updated_at = now()
    WHERE id = $1
    RETURNING id, order_id, currency
)
INSERT INTO refunds
    (payment_id, order_id, requested_by, amount, currency, reason, restock, provider_key, owner, lease_until)
SELECT id, order_id, $3, $2, currency, $4, $5, $6, $7, now() + make_interval(secs => $8)
FROM reserved
RETURNING {REFUND_COLUMNS}, provider_key
"""


async def begin(
    conn: Executor,
    *,
    payment_id: int,
    amount: int,
    requested_by: int,
    reason: str | None,
    restock: bool,
    provider_key: str,
    owner: int | None,
    lease_seconds: float,
) -> asyncpg.Record:
    """Record a pending refund of a payment locked by `lock_payment` in this transaction."""
    row = await conn.fetchrow(
        _BEGIN, payment_id, amount, requested_by, reason, restock, provider_key, owner, lease_seconds
    )
    assert row is not None
    return row


# --- step 3 -------------------------------------------------------------------------------

_LOCK_PAYMENT_OF = """
SELECT p.id FROM payments p JOIN refunds r ON r.payment_id = p.id
WHERE r.id = $1
FOR UPDATE OF p
"""
_FINISH_REFUND = f"""
UPDATE refunds SET status = $2, provider_ref = $3, failure_reason = $4,
                   owner = NULL, lease_until = NULL, updated_at = now()
WHERE id = $1 AND status = 'pending'
RETURNING {REFUND_COLUMNS}
"""
_SETTLE_PAYMENT = """
UPDATE payments SET amount_refund_pending = amount_refund_pending - $2,
                    amount_refunded = amount_refunded + CASE WHEN $3 THEN $2 ELSE 0 END,
                    updated_at = now()
WHERE id = $1
RETURNING amount, amount_refunded
"""
# The order follows its payment: amount_refunded, and `refunded` once the whole
# amount is back (from one of the statuses the caller names).
_SETTLE_ORDER = f"""
UPDATE orders o SET amount_refunded = $2,
                    status = CASE WHEN $3 AND prev.status = ANY($4::text[]) THEN 'refunded' ELSE prev.status END,
                    updated_at = now()
FROM (SELECT id, status FROM orders WHERE id = $1 FOR UPDATE) prev
WHERE o.id = prev.id
RETURNING {ORDER_COLUMNS}, {ITEMS_COLUMN}, prev.status AS previous_status
"""


@dataclass(frozen=True)
class Settled:
    refund: asyncpg.Record
    # The order after a succeeded refund (None after a failed one).
    order: asyncpg.Record | None


async def finish(
    conn: asyncpg.Connection,
    refund_id: int,
    *,
    status: str,
    provider_ref: str | None,
    failure_reason: str | None,
    refundable_statuses: Iterable[str],
) -> Settled | None:
    """Settle a pending refund ('succeeded' or 'failed') inside the caller's
    transaction; None if it was no longer pending (someone settled it first). A
    success that completes the whole amount marks the order refunded and, for a
    restocking refund, returns every unit of the order to stock."""
    await conn.fetchrow(_LOCK_PAYMENT_OF, refund_id)
    refund = await conn.fetchrow(_FINISH_REFUND, refund_id, status, provider_ref, failure_reason)
    if refund is None:
        return None
    succeeded = status == "succeeded"
    payment = await conn.fetchrow(_SETTLE_PAYMENT, refund["payment_id"], refund["amount"], succeeded)
    assert payment is not None
    if not succeeded:
        return Settled(refund, None)
    complete = payment["amount_refunded"] == payment["amount"]
    order = await conn.fetchrow(
        _SETTLE_ORDER, refund["order_id"], payment["amount_refunded"], complete, list(refundable_statuses)
    )
    assert order is not None
    if complete and refund["restock"]:
        await return_stock(conn, [refund["order_id"]])
    return Settled(refund, order)


# --- reads --------------------------------------------------------------------------------

_GET = f"SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"


async def get(db: Executor, refund_id: int) -> asyncpg.Record | None:
    return await db.fetchrow(_GET, refund_id)


_LIST = f"""
SELECT {REFUND_COLUMNS} FROM refunds
WHERE payment_id = $1 AND id > $2
ORDER BY id
LIMIT $3
"""


async def list_page(db: Database, payment_id: int, *, after_id: int, limit: int) -> list[asyncpg.Record]:
    """A payment's refunds oldest first, up to `limit` + 1 (the extra one tells a
    next page exists)."""
    return await db.fetch(_LIST, payment_id, after_id, limit + 1)


# --- reconciliation -----------------------------------------------------------------------

# As for payments (db/payments.py): pending refunds whose process is gone or whose
# lease ran out, claimed by this process.
_CLAIM_STALE = claim_stale_sql("refunds", "id, order_id, provider_key")


async def claim_stale(db: Database, *, batch: int, lease_seconds: float, owner: int | None) -> list[asyncpg.Record]:
    return await db.fetch(_CLAIM_STALE, batch, lease_seconds, owner)


_PENDING_COUNT = "SELECT count(*) FROM refunds WHERE status = 'pending'"


async def pending_count(db: Database) -> int:
    value: int = await db.fetchval(_PENDING_COUNT)
    return value


# --- invariants ---------------------------------------------------------------------------

_REFUND_VIOLATIONS = """
WITH ours AS (
    SELECT payment_id,
           sum(amount) FILTER (WHERE status = 'succeeded') AS succeeded,
           sum(amount) FILTER (WHERE status = 'pending') AS pending
    FROM refunds GROUP BY payment_id
), ledger AS (
    SELECT charge_reference, sum(amount) FILTER (WHERE status = 'succeeded') AS refunded
    FROM simulated_provider_refunds GROUP BY charge_reference
)
SELECT 'payment ' || p.id || ': refunds of ' || coalesce(r.succeeded, 0) || ' (+ ' || coalesce(r.pending, 0)
       || ' in flight) exceed its amount ' || p.amount AS problem
FROM payments p LEFT JOIN ours r ON r.payment_id = p.id
WHERE coalesce(r.succeeded, 0) + coalesce(r.pending, 0) > p.amount
UNION ALL
SELECT 'payment ' || p.id || ': amount_refunded ' || p.amount_refunded || ' (in flight ' || p.amount_refund_pending
       || ') but its refunds add up to ' || coalesce(r.succeeded, 0) || ' (in flight ' || coalesce(r.pending, 0) || ')'
FROM payments p LEFT JOIN ours r ON r.payment_id = p.id
WHERE p.amount_refunded <> coalesce(r.succeeded, 0) OR p.amount_refund_pending <> coalesce(r.pending, 0)
UNION ALL
SELECT 'refund ' || r.id || ' of payment ' || p.id || ', which is ' || p.status
FROM refunds r JOIN payments p ON p.id = r.payment_id
WHERE p.status <> 'succeeded'
UNION ALL
SELECT 'order ' || o.id || ' (' || o.status || '): amount_refunded ' || o.amount_refunded
       || ' but its payment refunded ' || coalesce(p.amount_refunded, 0) || ' of ' || coalesce(p.amount, 0)
FROM orders o LEFT JOIN payments p ON p.order_id = o.id AND p.status = 'succeeded'
WHERE o.amount_refunded <> coalesce(p.amount_refunded, 0)
   OR (o.status = 'refunded') <> coalesce(p.amount > 0 AND p.amount_refunded = p.amount, false)
UNION ALL
SELECT 'refund ' || r.id || ' succeeded without a refund at the provider'
FROM refunds r
WHERE r.status = 'succeeded' AND NOT EXISTS (
    SELECT 1 FROM simulated_provider_refunds l WHERE l.idempotency_key = r.provider_key AND l.status = 'succeeded'
)
UNION ALL
SELECT 'refund ' || r.id || ' failed but the provider refunded it'
FROM refunds r
WHERE r.status = 'failed' AND EXISTS (
    SELECT 1 FROM simulated_provider_refunds l WHERE l.idempotency_key = r.provider_key AND l.status = 'succeeded'
)
UNION ALL
SELECT 'payment ' || p.id || ': the provider refunded ' || coalesce(l.refunded, 0) || ' of its charge, '
       || CASE WHEN p.status = 'succeeded' THEN p.amount_refunded ELSE p.amount END || ' is recorded'
FROM payments p LEFT JOIN ledger l ON l.charge_reference = p.provider_ref
WHERE p.provider = 'simulated' AND p.provider_ref IS NOT NULL AND p.amount_refund_pending = 0
  -- a charge that could not apply and is still to be refunded is judged once it is
  AND NOT (p.status = 'failed' AND p.failure_reason = 'order_not_payable' AND p.refund_ref IS NULL)
  AND coalesce(l.refunded, 0) <> CASE
      WHEN p.status = 'succeeded' THEN p.amount_refunded
      WHEN p.refund_ref IS NOT NULL THEN p.amount
      ELSE 0
  END
UNION ALL
SELECT 'charge ' || c.reference || ': the provider refunded ' || l.refunded || ' of ' || c.amount
FROM simulated_provider_charges c JOIN ledger l ON l.charge_reference = c.reference
WHERE l.refunded > c.amount
"""


async def refund_violations(db: Database) -> list[str]:
    """Breaches of "money goes back at most once, never more than was charged":
    refunds beyond a payment's amount (ours or the provider's), counters that do not
    match the refunds, orders whose amount_refunded or `refunded` status does not
    match their payment, refunds the provider made that we recorded as failed or
    did not record, and the reverse. Refunds still pending are not judged."""
    return [r["problem"] for r in await db.fetch(_REFUND_VIOLATIONS)]
