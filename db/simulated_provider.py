"""The simulated payment provider's ledger (its own table: what the "gateway" knows)."""

from __future__ import annotations

import asyncpg

from db.pool import Database

_RECORD_CHARGE = """
WITH created AS (
    INSERT INTO simulated_provider_charges
        (idempotency_key, reference, amount, currency, status, failure_reason)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING status, reference, failure_reason
)
SELECT status, reference, failure_reason FROM created
"""
_LOOKUP = "SELECT status, reference, failure_reason FROM simulated_provider_charges WHERE idempotency_key = $1"


async def record_charge(
    db: Database, *, key: str, reference: str, amount: int, currency: str, status: str, failure_reason: str | None
) -> asyncpg.Record:
    """Record a charge once per key; a repeated key returns the first record."""
    row = await db.fetchrow(_RECORD_CHARGE, key, reference, amount, currency, status, failure_reason)
    if row is None:
        row = await db.fetchrow(_LOOKUP, key)
    assert row is not None
    return row


async def lookup(db: Database, key: str) -> asyncpg.Record | None:
    return await db.fetchrow(_LOOKUP, key)


_REFUND = """
UPDATE simulated_provider_charges
SET refund_reference = coalesce(refund_reference, $2)
WHERE reference = $1 AND status = 'succeeded'
RETURNING refund_reference
"""


async def refund(db: Database, charge_reference: str, refund_reference: str) -> str | None:
    """Mark a succeeded charge refunded (once); returns the refund's reference."""
    value: str | None = await db.fetchval(_REFUND, charge_reference, refund_reference)
    return value
