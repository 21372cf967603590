"""Payments: the three steps of a charge (steps 1 and 3 are one call each of their
stored functions, sql/functions/payments.sql), reconciliation, and the charge
invariants."""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from db.idempotency import Claim
from db.liveness import LIVE_WORKERS, claim_stale_sql, release_claim_sql
from db.pool import Database, Executor
from db.refusals import Refusal, refused

_BEGIN = "SELECT (r.payment).*, r.refusal FROM begin_payment($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) r"
_BEGIN_ONCE = """
SELECT (r.payment).*, r.refusal, r.key_taken
FROM begin_payment_once($13, $14, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) r
"""


async def begin(
    db: Executor,
    *,
    order_id: int,
    user_id: int,
    amount: int | None,
    provider: str,
    provider_key: str,
    lease_seconds: float,
    worker: int | None,
    max_declines_per_order: int,
    max_declines_per_user: int,
    client_ip: str,
    max_declines_per_ip: int,
    payment_method: str | None,
    claim: Claim | None = None,
) -> asyncpg.Record | None:
    """Step 1: record a pending payment for the user's order (the payments row, with
    its provider_key), or raise the refusal (the decline limits, the order's checks, or
    'payment_in_flight'). `worker`: the liveness lock id of the process that will call
    the provider; `client_ip`: where the request came from (0 for
    `max_declines_per_ip` turns that limit off); `payment_method` what the customer paid
    with, kept so that a lost answer can be asked for by replaying the request. With
    the request's Idempotency-Key `claim`, the key is claimed and names the payment, in
    the same transaction (a refusal keeps no record); None when the key was taken
    already. One statement: on a Database it is a transaction of its own."""
    keyed = () if claim is None else (claim.key, claim.request_hash)
    try:
        row = await db.fetchrow(
            _BEGIN if claim is None else _BEGIN_ONCE,
            order_id,
            user_id,
            amount,
            provider,
            provider_key,
            lease_seconds,
            worker,
            max_declines_per_order,
            max_declines_per_user,
            client_ip,
            max_declines_per_ip,
            payment_method,
            *keyed,
        )
    except asyncpg.UniqueViolationError:
        # The partial unique index on pending payments: another one is in flight.
        raise Refusal("payment_in_flight") from None
    assert row is not None
    return None if claim is not None and row["key_taken"] else refused(row)


_SETTLE = "SELECT (s.payment).*, s.refund_due FROM settle_payment($1, $2, $3, $4, $5, $6) AS s"


async def settle(
    db: Executor,
    payment_id: int,
    *,
    status: str,
    provider_ref: str | None,
    failure_reason: str | None,
    client_secret: str | None = None,
    next_action: str | None = None,
) -> asyncpg.Record | None:
    """Step 3: settle a payment in flight ('succeeded', 'failed', or 'requires_action'
    with the `client_secret` and `next_action` (JSON text) its customer needs) and write
    its events: the payments row with refund_due, or None if it was no longer in flight
    (someone settled it first: nothing written). One statement: on a Database it is a
    transaction of its own."""
    return await db.fetchrow(_SETTLE, payment_id, status, provider_ref, failure_reason, client_secret, next_action)


_GET = "SELECT * FROM payments WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)"


async def get(db: Executor, payment_id: int, user_id: int | None) -> asyncpg.Record | None:
    """A payment; `user_id` limits it to that user's payments (None: any)."""
    return await db.fetchrow(_GET, payment_id, user_id)


# Pending payments whose worker is gone (its liveness lock is free) or whose lease ran
# out (the outcome stayed unknown, or the worker lost its lock): claimed for a new
# lease by this worker, so that one reconciler at a time handles each (and another
# takes over if that one dies too).
_CLAIM_STALE = claim_stale_sql("payments", "provider = $4")


async def claim_stale(
    db: Database, *, batch: int, lease_seconds: float, worker: int | None, provider: str
) -> list[asyncpg.Record]:
    return await db.fetch(_CLAIM_STALE, batch, lease_seconds, worker, provider)


_RELEASE_CLAIM = release_claim_sql("payments")


async def release_claim(db: Database, row_id: int, worker: int | None, retry_seconds: float) -> None:
    await db.execute(_RELEASE_CLAIM, row_id, worker, retry_seconds)


# Payments waiting for their customer (3-D Secure) whose order ended meanwhile (expired,
# cancelled, deleted): their PaymentIntent is to be cancelled. Claimed with a lease, so
# one reconciler at a time asks the provider about each.
_CLAIM_ABANDONED = f"""
UPDATE payments SET lease_until = now() + make_interval(secs => $2), worker = $3
WHERE id IN (
    SELECT p.id FROM payments p JOIN orders o ON o.id = p.order_id
    WHERE p.status = 'requires_action' AND p.provider = $4 AND (o.status <> 'pending' OR o.deleted_at IS NOT NULL)
      AND (p.lease_until IS NULL OR p.lease_until < now()
           OR (p.worker IS NOT NULL AND p.worker NOT IN ({LIVE_WORKERS})))
    ORDER BY p.id
    LIMIT $1
    FOR UPDATE OF p SKIP LOCKED
)
RETURNING *
"""


async def claim_abandoned(
    db: Database, *, batch: int, lease_seconds: float, worker: int | None, provider: str
) -> list[asyncpg.Record]:
    return await db.fetch(_CLAIM_ABANDONED, batch, lease_seconds, worker, provider)


_PAYABLE = """
SELECT o.user_id, o.status, o.total, o.currency,
       EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.status = 'requires_action') AS waiting
FROM orders o WHERE o.id = $1 AND o.deleted_at IS NULL
"""


async def payable(db: Executor, order_id: int) -> asyncpg.Record | None:
    """What is asked of an order before a payment of it is queued: its owner (user_id),
    status, total, currency, and whether a payment of it waits for its customer."""
    return await db.fetchrow(_PAYABLE, order_id)


_WAITING = "SELECT * FROM payments WHERE order_id = $1 AND status = 'requires_action'"


async def waiting(db: Executor, order_id: int) -> asyncpg.Record | None:
    """The order's payment waiting for its customer, if any."""
    return await db.fetchrow(_WAITING, order_id)


_REFUNDS_DUE = """
SELECT * FROM payments
WHERE status = 'failed' AND failure_reason = 'order_not_payable' AND refund_ref IS NULL AND provider = $2
ORDER BY id
LIMIT $1
"""
_SET_REFUNDED = "UPDATE payments SET refund_ref = $2, updated_at = now() WHERE id = $1 AND refund_ref IS NULL"


async def refunds_due(db: Database, batch: int, provider: str) -> list[asyncpg.Record]:
    return await db.fetch(_REFUNDS_DUE, batch, provider)


async def set_refunded(db: Database, payment_id: int, refund_ref: str) -> None:
    await db.execute(_SET_REFUNDED, payment_id, refund_ref)


# --- invariants -------------------------------------------------------------------------

_CHARGE_VIOLATIONS = """
SELECT 'order ' || o.id || ' is ' || o.status || ' with ' || count(p.id) || ' succeeded payments' AS problem
FROM orders o LEFT JOIN payments p ON p.order_id = o.id AND p.status = 'succeeded'
GROUP BY o.id
HAVING (o.status = ANY($1::text[])) <> (count(p.id) = 1) OR count(p.id) > 1
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


async def charge_violations(db: Database, paid_statuses: Collection[str]) -> list[str]:
    """Breaches of "exactly one charge per paid order": orders in a `paid_statuses`
    status without exactly one succeeded payment, succeeded payments of unpaid orders, money
    the provider kept (not refunded) for no succeeded payment, succeeded payments the
    provider has no charge for. Payments still pending are not judged (they are not
    settled yet). Refunds are judged by db.refunds.refund_violations."""
    return [r["problem"] for r in await db.fetch(_CHARGE_VIOLATIONS, list(paid_statuses))]


_PENDING_COUNT = "SELECT count(*) FROM payments WHERE status = 'pending'"


async def pending_count(db: Database) -> int:
    value: int = await db.fetchval(_PENDING_COUNT)
    return value
