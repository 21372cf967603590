"""The simulated payment provider's ledger (tables of its own: what the "gateway" knows).

Every write is keyed by the caller's idempotency key, and a lookup that finds
nothing voids the key (a row with status 'voided'), so that a call still on its way
can never take effect after the lookup said it had not. Each check for an existing
row is a statement of its own after the insert: under READ COMMITTED it then sees a
row that a concurrent insert (the one the insert waited for) committed.
"""

from __future__ import annotations

import asyncpg

from db.pool import Database

_RECORD_CHARGE = """
INSERT INTO simulated_provider_charges
    (idempotency_key, reference, amount, currency, status, failure_reason, refundable)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING status, reference, failure_reason
"""
_CHARGE = "SELECT status, reference, failure_reason FROM simulated_provider_charges WHERE idempotency_key = $1"
_VOID_CHARGE = """
INSERT INTO simulated_provider_charges (idempotency_key, reference, amount, currency, status)
VALUES ($1, 'sim_void_' || $1, 0, 'XXX', 'voided')
ON CONFLICT (idempotency_key) DO NOTHING
"""


async def record_charge(
    db: Database,
    *,
    key: str,
    reference: str,
    amount: int,
    currency: str,
    status: str,
    failure_reason: str | None,
    refundable: bool,
) -> asyncpg.Record:
    """Record a charge once per key; a repeated (or voided) key returns the first record."""
    row = await db.fetchrow(_RECORD_CHARGE, key, reference, amount, currency, status, failure_reason, refundable)
    if row is None:
        row = await db.fetchrow(_CHARGE, key)
    assert row is not None
    return row


async def lookup_charge(db: Database, key: str) -> asyncpg.Record | None:
    """The charge made with this key, or None, in which case the key is now void."""
    await db.execute(_VOID_CHARGE, key)
    row = await db.fetchrow(_CHARGE, key)
    return None if row is None or row["status"] == "voided" else row


# A refund succeeds unless its charge was made with a card whose refunds fail (or
# there is no such succeeded charge). Like a real gateway's, this ledger takes the
# amount it is given: keeping refunds within the charge is the service's job, and
# check-invariants verifies it did.
_RECORD_REFUND = """
INSERT INTO simulated_provider_refunds
    (idempotency_key, reference, charge_reference, amount, status, failure_reason)
SELECT $1, $2, $3, $4,
       CASE WHEN c.refundable THEN 'succeeded' ELSE 'failed' END,
       CASE WHEN c.refundable THEN NULL WHEN c.refundable IS NULL THEN 'no_such_charge' ELSE 'refund_failed' END
FROM (SELECT 1) AS one
LEFT JOIN simulated_provider_charges c ON c.reference = $3 AND c.status = 'succeeded'
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING status, reference, failure_reason
"""
_REFUND = "SELECT status, reference, failure_reason FROM simulated_provider_refunds WHERE idempotency_key = $1"
_VOID_REFUND = """
INSERT INTO simulated_provider_refunds (idempotency_key, reference, charge_reference, amount, status)
VALUES ($1, 'sim_void_' || $1, '', 0, 'voided')
ON CONFLICT (idempotency_key) DO NOTHING
"""


async def record_refund(
    db: Database, *, key: str, reference: str, charge_reference: str, amount: int
) -> asyncpg.Record:
    """Record a refund once per key; a repeated (or voided) key returns the first record."""
    row = await db.fetchrow(_RECORD_REFUND, key, reference, charge_reference, amount)
    if row is None:
        row = await db.fetchrow(_REFUND, key)
    assert row is not None
    return row


async def lookup_refund(db: Database, key: str) -> asyncpg.Record | None:
    """The refund made with this key, or None, in which case the key is now void."""
    await db.execute(_VOID_REFUND, key)
    row = await db.fetchrow(_REFUND, key)
    return None if row is None or row["status"] == "voided" else row
