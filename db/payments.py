"""Payments: the three steps of a charge, reconciliation, and the charge invariants."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from db.liveness import claim_stale_sql
from db.orders import Expired, OrderNotFound, PaymentInFlight, WrongStatus
from db.pool import Database, Executor

PAYMENT_COLUMNS = (
    "id, order_id, amount, amount_refunded, currency, status, failure_reason, provider, provider_ref, created_at"
)


@dataclass
class AmountMismatch(Exception):
    total: int


@dataclass
class TooManyDeclinesForOrder(Exception):
    declines: int


@dataclass
class TooManyDeclines(Exception):
    retry_after: int


# Step 1 in one statement (sql/018_begin_payment.sql): under the customer's lock, the
# decline limits (card testing), then the order's lock, its checks (and the amount's),
# and the pending payment. The partial unique index on pending payments makes a
# second one for the same order fail, whichever process tries.
_BEGIN = "SELECT payment, refusal, order_status, number FROM begin_payment($1, $2, $3, $4, $5, $6, $7, $8, $9)"


async def begin(
    db: Executor,
    *,
    order_id: int,
    user_id: int,
    amount: int | None,
    provider: str,
    provider_key: str,
    lease_seconds: float,
    owner: int | None,
    max_declines_per_order: int,
    max_declines_per_user: int,
) -> asyncpg.Record:
    """Record a pending payment for the user's order (the payments row, with its
    provider_key), or raise why it cannot be paid: TooManyDeclinesForOrder,
    TooManyDeclines, OrderNotFound, WrongStatus, Expired, AmountMismatch or
    PaymentInFlight. `owner`: the liveness lock id of the process that will call the
    provider. One statement: on a Database it is a transaction of its own."""
    try:
        row = await db.fetchrow(
            _BEGIN,
            order_id,
            user_id,
            amount,
            provider,
            provider_key,
            lease_seconds,
            owner,
            max_declines_per_order,
            max_declines_per_user,
        )
    except asyncpg.UniqueViolationError:
        raise PaymentInFlight() from None
    assert row is not None
    refusal = row["refusal"]
    if refusal is None:
        payment: asyncpg.Record = row["payment"]
        return payment
    if refusal == "too_many_order_declines":
        raise TooManyDeclinesForOrder(row["number"])
    if refusal == "too_many_declines":
        raise TooManyDeclines(row["number"])
    if refusal == "not_found":
        raise OrderNotFound()
    if refusal == "wrong_status":
        raise WrongStatus(row["order_status"])
    if refusal == "expired":
        raise Expired()
    assert refusal == "amount_mismatch", refusal
    raise AmountMismatch(row["number"])


# Step 3 in one statement (sql/019_settle_payment.sql): record the provider's answer
# and, on success, mark the order paid, and write payment.<status> (then order.paid,
# when the order was paid) in the same statement, so the events commit with the
# change. A charge that succeeded for an order that can no longer be paid is recorded
# as failed with `order_not_payable` and must be refunded (refund_due).
_FINISH = "SELECT (s.payment).*, s.refund_due FROM settle_payment($1, $2, $3, $4) AS s"


async def finish(
    db: Executor, payment_id: int, *, status: str, provider_ref: str | None, failure_reason: str | None
) -> asyncpg.Record | None:
    """Settle a pending payment ('succeeded' or 'failed') and write its events: the
    payments row with refund_due, or None if it was no longer pending (someone
    settled it first: nothing written). One statement: on a Database it is a
    transaction of its own."""
    return await db.fetchrow(_FINISH, payment_id, status, provider_ref, failure_reason)


_GET = f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)"


async def get(db: Executor, payment_id: int, owner_id: int | None) -> asyncpg.Record | None:
    return await db.fetchrow(_GET, payment_id, owner_id)


# Pending payments whose process is gone (its liveness lock is free) or whose lease
# ran out (the outcome stayed unknown, or the process lost its lock): claimed for a
# new lease, owned by the claiming process, so that one reconciler at a time
# handles each (and another takes over if that one dies too).
_CLAIM_STALE = claim_stale_sql("payments", "id, order_id, amount, currency, provider_key")


async def claim_stale(db: Database, *, batch: int, lease_seconds: float, owner: int | None) -> list[asyncpg.Record]:
    return await db.fetch(_CLAIM_STALE, batch, lease_seconds, owner)


_REFUNDS_DUE = """
SELECT id, order_id, amount, currency, provider_key, provider_ref FROM payments
WHERE status = 'failed' AND failure_reason = 'order_not_payable' AND refund_ref IS NULL
ORDER BY id
LIMIT $1
"""
_SET_REFUNDED = "UPDATE payments SET refund_ref = $2, updated_at = now() WHERE id = $1 AND refund_ref IS NULL"


async def refunds_due(db: Database, batch: int) -> list[asyncpg.Record]:
    return await db.fetch(_REFUNDS_DUE, batch)


async def set_refunded(db: Database, payment_id: int, refund_ref: str) -> None:
    await db.execute(_SET_REFUNDED, payment_id, refund_ref)


# --- invariants -------------------------------------------------------------------------

_CHARGE_VIOLATIONS = """
SELECT 'order ' || o.id || ' is ' || o.status || ' with ' || count(p.id) || ' succeeded payments' AS problem
FROM orders o LEFT JOIN payments p ON p.order_id = o.id AND p.status = 'succeeded'
GROUP BY o.id
HAVING (o.status IN ('paid', 'shipped', 'delivered', 'refunded')) <> (count(p.id) = 1) OR count(p.id) > 1
UNION ALL
SELECT 'charge ' || c.reference || ' (' || c.idempotency_key || ') kept without a succeeded payment'
FROM simulated_provider_charges c
WHERE c.status = 'succeeded'
  AND c.amount > coalesce((
      SELECT sum(r.amount) FROM simulated_provider_refunds r
      WHERE r.charge_reference = c.reference AND r.status = 'succeeded'
  ), 0)
  AND NOT EXISTS (
      SELECT 1 FROM payments p
      WHERE p.provider_key = c.idempotency_key AND p.status = 'succeeded' AND p.provider_ref = c.reference
  )
  AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.provider_key = c.idempotency_key AND p.status = 'pending')
UNION ALL
SELECT 'payment ' || p.id || ' succeeded without a charge'
FROM payments p
WHERE p.status = 'succeeded' AND p.provider = 'simulated' AND NOT EXISTS (
    SELECT 1 FROM simulated_provider_charges c WHERE c.idempotency_key = p.provider_key AND c.status = 'succeeded'
)
"""


async def charge_violations(db: Database) -> list[str]:
    """Breaches of "exactly one charge per paid order": paid (or refunded) orders
    without exactly one succeeded payment, succeeded payments of unpaid orders, money
    the provider kept (not refunded) for no succeeded payment, succeeded payments the
    provider has no charge for. Payments still pending are not judged (they are not
    settled yet). Refunds are judged by db.refunds.refund_violations."""
    return [r["problem"] for r in await db.fetch(_CHARGE_VIOLATIONS)]


_PENDING_COUNT = "SELECT count(*) FROM payments WHERE status = 'pending'"


async def pending_count(db: Database) -> int:
    value: int = await db.fetchval(_PENDING_COUNT)
    return value
