"""Failed-login counters (fixed window per key), shared by every process."""

from __future__ import annotations

import asyncpg

from db.pool import Database

# Seconds left in each key's window, with its failure count.
_CURRENT = """
SELECT key, failures,
       extract(epoch FROM window_start + make_interval(secs => $2) - now())::int AS seconds_left
FROM login_failures
WHERE key = ANY($1::text[]) AND window_start > now() - make_interval(secs => $2)
"""


async def current(db: Database, keys: list[str], window_seconds: int) -> list[asyncpg.Record]:
    return await db.fetch(_CURRENT, keys, window_seconds)


# A failure opens a new window when the key's last one has ended.
_RECORD = """
INSERT INTO login_failures AS f (key, failures, window_start)
SELECT k, 1, now() FROM unnest($1::text[]) AS k
ON CONFLICT (key) DO UPDATE SET
    failures = CASE WHEN f.window_start <= now() - make_interval(secs => $2) THEN 1 ELSE f.failures + 1 END,
    window_start = CASE WHEN f.window_start <= now() - make_interval(secs => $2) THEN now() ELSE f.window_start END
"""


async def record(db: Database, keys: list[str], window_seconds: int) -> None:
    await db.execute(_RECORD, keys, window_seconds)


_CLEAR = "DELETE FROM login_failures WHERE key = $1"


async def clear(db: Database, key: str) -> None:
    await db.execute(_CLEAR, key)


_PURGE = "DELETE FROM login_failures WHERE window_start <= now() - make_interval(secs => $1)"


async def purge(db: Database, window_seconds: int) -> None:
    await db.execute(_PURGE, window_seconds)
