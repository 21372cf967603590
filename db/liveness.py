"""Liveness locks: each worker process holds a session-level advisory lock, keyed by
a random id of its own (the worker id), on a connection of its own. PostgreSQL
releases the lock the moment that session ends (the process died, or its connection
was lost), so "is the lock of worker N held?" tells whether the worker that has some
work in flight (a payment's or refund's `worker`) is still there."""

from __future__ import annotations

import asyncpg

# The first key of the two-key advisory lock form: names "storefront liveness"
# among advisory locks (migrations use the one-key form, which never collides).
NAMESPACE = 0x5354

_TRY_LOCK = f"SELECT pg_try_advisory_lock({NAMESPACE}, $1)"

# The workers whose lock is held right now, in this database: a fragment for queries
# that look for work whose worker is gone.
LIVE_WORKERS = f"""
SELECT l.objid::bigint FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.classid = {NAMESPACE} AND l.objsubid = 2 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def claim_stale_sql(table: str, provider_is: str) -> str:
    """The statement that claims pending rows of `table` (payments, refunds) whose
    worker is gone or whose lease ran out, for the calling worker: $1 the batch, $2
    the new lease in seconds, $3 the new worker, $4 the worker's payment provider (only
    that provider can be asked about a row: `provider_is` is the condition that says a
    row is of provider $4). Rows another worker is claiming are skipped, not waited
    for."""
    return f"""
UPDATE {table} SET lease_until = now() + make_interval(secs => $2), worker = $3
WHERE id IN (
    SELECT id FROM {table}
    WHERE status = 'pending' AND {provider_is}
      AND (lease_until < now() OR (worker IS NOT NULL AND worker NOT IN ({LIVE_WORKERS})))
    ORDER BY lease_until
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING *
"""


def release_claim_sql(table: str) -> str:
    """The statement that gives back a claim on a pending row of `table` whose
    reconciliation found the provider unreachable: $1 the row, $2 the worker that
    claimed it, due again in $3 seconds (a later round), not when its lease runs out (a
    lease covers a call and a lookup with all their retries: tens of seconds)."""
    return f"""
UPDATE {table} SET lease_until = now() + make_interval(secs => $3)
WHERE id = $1 AND worker = $2 AND status = 'pending'
"""


async def try_lock(conn: asyncpg.Connection, worker: int) -> bool:
    """Take the liveness lock of `worker` for this session; False if it is held."""
    return bool(await conn.fetchval(_TRY_LOCK, worker))


async def ping(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT 1")
