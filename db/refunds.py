"""Refunds: the three steps of a refund (steps 1 and 3 are one call each of their
stored functions, sql/functions/refunds.sql), its reads, reconciliation, and the
refund invariants."""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from db.idempotency import Claim
from db.liveness import claim_stale_sql, release_claim_sql
from db.pool import Database, Executor
from db.refusals import refused

_BEGIN = "SELECT (r.refund).*, r.refusal FROM begin_refund($1, $2, $3, $4, $5, $6, $7, $8) r"
_BEGIN_ONCE = """
SELECT (r.refund).*, r.refusal, r.key_taken FROM begin_refund_once($9, $10, $1, $2, $3, $4, $5, $6, $7, $8) r
"""


async def begin(
    db: Executor,
    *,
    payment_id: int,
    requested_by: int,
    amount: int | None,
    reason: str | None,
    restock: bool,
    provider_key: str,
    worker: int | None,
    lease_seconds: float,
    claim: Claim | None = None,
) -> asyncpg.Record | None:
    """Step 1: reserve the amount (None: what is left) on the payment and record a
    pending refund, or raise the refusal (the refund rules, in refund_refusal). With
    the request's Idempotency-Key `claim` (of `requested_by`), as db/payments.py
    `begin` does it. One statement: on a Database it is a transaction of its own."""
    keyed = () if claim is None else (claim.key, claim.request_hash)
    row = await db.fetchrow(
        _BEGIN if claim is None else _BEGIN_ONCE,
        payment_id,
        requested_by,
        amount,
        reason,
        restock,
        provider_key,
        worker,
        lease_seconds,
        *keyed,
    )
    assert row is not None
    return None if claim is not None and row["key_taken"] else refused(row)


_SETTLE = """
SELECT (s.refund).*, s.previous_status, s.became_refunded FROM settle_refund($1, $2, $3, $4, $5) AS s
"""


async def settle(
    db: Executor,
    refund_id: int,
    *,
    status: str,
    provider_ref: str | None,
    failure_reason: str | None,
    refundable_statuses: Collection[str],
) -> asyncpg.Record | None:
    """Step 3: settle a pending refund ('succeeded' or 'failed') with its events: the
    refunds row with the order's previous_status and whether it became_refunded; None
    if it was no longer pending (someone settled it first: nothing written)."""
    return await db.fetchrow(_SETTLE, refund_id, status, provider_ref, failure_reason, list(refundable_statuses))


_FAIL = """
SELECT (f.refund).*, f.previous_status, f.restored_status FROM fail_refund($1, $2) AS f
"""


async def fail(db: Executor, refund_id: int, *, failure_reason: str | None) -> asyncpg.Record | None:
    """Undo a succeeded refund the provider reports failed afterwards, with refund.failed:
    the refunds row with the order's previous_status and the restored_status it went
    back to (NULL: it had not become refunded); None if the refund was not succeeded
    (nothing written)."""
    return await db.fetchrow(_FAIL, refund_id, failure_reason)


# --- reads --------------------------------------------------------------------------------

_GET = "SELECT * FROM refunds WHERE id = $1"


async def get(db: Executor, refund_id: int) -> asyncpg.Record | None:
    return await db.fetchrow(_GET, refund_id)


_PAGE = """
SELECT * FROM refunds
WHERE payment_id = $1 AND id > coalesce($2::bigint, 0)
ORDER BY id
LIMIT $3
"""


async def page(db: Database, payment_id: int, *, after_id: int | None, limit: int) -> list[asyncpg.Record]:
    """A payment's refunds oldest first, `limit` at most, after `after_id`."""
    return await db.fetch(_PAGE, payment_id, after_id, limit)


# --- reconciliation -----------------------------------------------------------------------

# As for payments (db/payments.py): pending refunds whose worker is gone or whose lease
# ran out, claimed by this worker.
_CLAIM_STALE = claim_stale_sql("refunds", "payment_id IN (SELECT p.id FROM payments p WHERE p.provider = $4)")


async def claim_stale(
    db: Database, *, batch: int, lease_seconds: float, worker: int | None, provider: str
) -> list[asyncpg.Record]:
    return await db.fetch(_CLAIM_STALE, batch, lease_seconds, worker, provider)


_RELEASE_CLAIM = release_claim_sql("refunds")


async def release_claim(db: Database, row_id: int, worker: int | None, retry_seconds: float) -> None:
    await db.execute(_RELEASE_CLAIM, row_id, worker, retry_seconds)


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
FROM refunds r JOIN payments p ON p.id = r.payment_id AND p.provider = 'simulated'
WHERE r.status = 'succeeded' AND NOT EXISTS (
    SELECT 1 FROM simulated_provider_refunds l WHERE l.idempotency_key = r.provider_key AND l.status = 'succeeded'
)
UNION ALL
SELECT 'refund ' || r.id || ' failed but the provider refunded it'
FROM refunds r JOIN payments p ON p.id = r.payment_id AND p.provider = 'simulated'
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
    did not record, and the reverse (the simulated provider's ledger; another
    provider's records are compared by whoever can read them, as the tests do with
    Stripe's stand-in). Refunds still pending are not judged."""
    return [r["problem"] for r in await db.fetch(_REFUND_VIOLATIONS)]
