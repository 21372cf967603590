"""Idempotency-Key records (per user) for the requests that move money: payments
(POST /api/payments) and refunds (POST /api/payments/{id}/refunds). A record exists
only for a request that was carried out: it names the payment or refund it started."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import asyncpg

from db.pool import Database, Executor

# What a record can start: its column in idempotency_keys is `<kind>_id`, and `find`
# returns that row as the record named `<kind>`.
Kind = Literal["payment", "refund"]


@dataclass(frozen=True)
class Claim:
    """A request's Idempotency-Key and the hash of the request, to claim for the user
    who makes it in the transaction that starts its work (db/payments.py and
    db/refunds.py `begin`; sql/functions/idempotency.sql)."""

    key: str
    request_hash: bytes


# The record, with the payment or refund it started (if any) in its current state:
# `payment` and `refund` are those rows as one record each, read by column name
# (NULL when none).
_FIND = """
SELECT k.request_hash, p AS payment, r AS refund
FROM idempotency_keys k
LEFT JOIN payments p ON p.id = k.payment_id
LEFT JOIN refunds r ON r.id = k.refund_id
WHERE k.user_id = $1 AND k.key = $2
"""


async def find(db: Executor, user_id: int, key: str) -> asyncpg.Record | None:
    return await db.fetchrow(_FIND, user_id, key)


_PURGE = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)"


async def purge(db: Database, ttl_seconds: float) -> int:
    """Delete records older than the TTL; returns how many."""
    status = await db.execute(_PURGE, ttl_seconds)
    return int(status.split()[-1])
