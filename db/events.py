"""The events table: the outbox that the feed and webhook deliveries read (events are
written by the stored functions that make the changes: sql/functions/events.sql)."""

from __future__ import annotations

import asyncpg

from db.pool import Executor

# Only events of transactions older than every transaction still in flight (see
# sql/009_events.sql): whatever commits later sorts after the last one shown. The
# types filter is an array (NULL: every type).
EVENT_COLUMNS = "e.id, e.txid::text::bigint AS txid, e.type, e.data::text AS data, e.created_at"
_FEED = f"""
SELECT {EVENT_COLUMNS}
FROM events e
WHERE (e.txid, e.id) > ($1::text::xid8, $2::bigint)
  AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
  AND ($3::text[] IS NULL OR e.type = ANY($3::text[]))
ORDER BY e.txid, e.id
LIMIT $4
"""


async def feed(conn: Executor, after: tuple[int, int], types: list[str] | None, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` events after position `after` (txid, id), in feed order. The
    `data` column is the stored JSON text."""
    return await conn.fetch(_FEED, str(after[0]), after[1], types, limit)


_PURGE = """
DELETE FROM events e
WHERE e.created_at < now() - make_interval(secs => $1)
  AND (e.txid, e.id) <= (SELECT txid, event_id FROM webhook_dispatch WHERE id = 1)
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.status = 'pending')
"""


async def purge(conn: Executor, older_than_seconds: float) -> int:
    """Delete events older than the retention that every webhook is done with."""
    return int((await conn.execute(_PURGE, older_than_seconds)).split()[-1])
