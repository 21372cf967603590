"""Idempotency-Key records (per user) for POST /api/payments."""

from __future__ import annotations

import asyncpg

from db.pool import Database, Executor

_CLAIM = """
INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3)
ON CONFLICT (user_id, key) DO NOTHING
RETURNING true
"""


async def claim(db: Executor, user_id: int, key: str, request_hash: bytes) -> bool:
    """Take the key for a new request; False if it was already taken (perhaps by a
    request still in flight, whose transaction this waits for)."""
    return bool(await db.fetchval(_CLAIM, user_id, key, request_hash))


# The record, with the payment it started (if any) in its current state: `payment`
# is the payments row as one record, read by column name (NULL when none).
_FIND = """
SELECT k.request_hash, k.response_status, k.response_body, p AS payment
FROM idempotency_keys k LEFT JOIN payments p ON p.id = k.payment_id
WHERE k.user_id = $1 AND k.key = $2
"""


async def find(db: Executor, user_id: int, key: str) -> asyncpg.Record | None:
    return await db.fetchrow(_FIND, user_id, key)


_ATTACH_PAYMENT = "UPDATE idempotency_keys SET payment_id = $3 WHERE user_id = $1 AND key = $2"


async def attach_payment(db: Executor, user_id: int, key: str, payment_id: int) -> None:
    await db.execute(_ATTACH_PAYMENT, user_id, key, payment_id)


_STORE_RESPONSE = """
UPDATE idempotency_keys SET response_status = $3, response_body = $4 WHERE user_id = $1 AND key = $2
"""


async def store_response(db: Executor, user_id: int, key: str, status: int, body: bytes) -> None:
    await db.execute(_STORE_RESPONSE, user_id, key, status, body)


_PURGE = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)"


async def purge(db: Database, ttl_seconds: int) -> int:
    """Delete records older than the TTL; returns how many."""
    status = await db.execute(_PURGE, ttl_seconds)
    return int(status.split()[-1])
