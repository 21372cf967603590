"""Webhooks, the fan-out of outbox events into deliveries, and the delivery queues.

The API's queries never select `secret` (see sql/011_webhooks.sql): only INSERT
returns it (the one answer that shows it) and only the delivery claim reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from db import events as events_db
from db.pool import Database

# What may leave the table through the API: every column but the secret (and the
# internal active_since).
WEBHOOK_COLUMNS = "id, url, events, description, enabled, created_at, updated_at"

_INSERT = f"""
INSERT INTO webhooks (url, events, description, secret) VALUES ($1, $2, $3, $4)
RETURNING {WEBHOOK_COLUMNS}
"""


async def create(db: Database, *, url: str, events: list[str], description: str, secret: str) -> asyncpg.Record:
    row = await db.fetchrow(_INSERT, url, events, description, secret)
    assert row is not None
    return row


_GET = f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"


async def get(db: Database, webhook_id: int) -> asyncpg.Record | None:
    return await db.fetchrow(_GET, webhook_id)


_PAGE = f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id > coalesce($1::bigint, 0) ORDER BY id LIMIT $2"


async def page(db: Database, after_id: int | None, limit: int) -> list[asyncpg.Record]:
    """Oldest first, `limit` rows at most, after `after_id`."""
    return await db.fetch(_PAGE, after_id, limit)


# Only the fields named in $2 change. Enabling a disabled webhook restarts its delivery
# from now: what happened while it was disabled is not sent.
_UPDATE = f"""
UPDATE webhooks SET
    url = CASE WHEN 'url' = ANY ($2::text[]) THEN $3 ELSE url END,
    events = CASE WHEN 'events' = ANY ($2::text[]) THEN $4 ELSE events END,
    description = CASE WHEN 'description' = ANY ($2::text[]) THEN $5 ELSE description END,
    active_since = CASE WHEN 'enabled' = ANY ($2::text[]) AND $6 AND NOT enabled THEN now() ELSE active_since END,
    enabled = CASE WHEN 'enabled' = ANY ($2::text[]) THEN $6 ELSE enabled END,
    updated_at = now()
WHERE id = $1
RETURNING {WEBHOOK_COLUMNS}
"""


async def update(db: Database, webhook_id: int, changes: dict[str, Any]) -> asyncpg.Record | None:
    """Change the named fields; None when there is no such webhook."""
    return await db.fetchrow(
        _UPDATE,
        webhook_id,
        list(changes),
        changes.get("url"),
        changes.get("events"),
        changes.get("description"),
        changes.get("enabled"),
    )


_DELETE = "DELETE FROM webhooks WHERE id = $1"


async def delete(db: Database, webhook_id: int) -> bool:
    """Delete a webhook with its deliveries and their log."""
    return await db.execute(_DELETE, webhook_id) == "DELETE 1"


_ATTEMPTS = """
SELECT * FROM webhook_attempts
WHERE webhook_id = $1 AND id < coalesce($2::bigint, 9223372036854775807)
ORDER BY id DESC
LIMIT $3
"""


async def attempts_page(db: Database, webhook_id: int, before_id: int | None, limit: int) -> list[asyncpg.Record]:
    """The delivery log, newest first, `limit` rows at most, before `before_id`."""
    return await db.fetch(_ATTEMPTS, webhook_id, before_id, limit)


# --- fan-out: outbox events -> deliveries ----------------------------------------------

# The lock says who fans out; the others skip their turn. The row is made again if
# it is missing (tests empty every table).
_LOCK_POSITION = "SELECT txid::text::bigint AS txid, event_id FROM webhook_dispatch WHERE id = 1 FOR UPDATE SKIP LOCKED"
_ENSURE_POSITION = "INSERT INTO webhook_dispatch VALUES (1, '0', 0) ON CONFLICT DO NOTHING"
_ENABLED = "SELECT id, events, active_since FROM webhooks WHERE enabled"
_INSERT_DELIVERIES = """
INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, resource)
SELECT w, e, t, r FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) WITH ORDINALITY AS d (w, e, t, r, n)
ORDER BY n
"""
_MOVE_POSITION = "UPDATE webhook_dispatch SET txid = $1::text::xid8, event_id = $2 WHERE id = 1"

Delivery = tuple[int, int, str, str]  # (webhook_id, event_id, event_type, resource)
# Which deliveries a batch of events makes, given the enabled webhooks.
Plan = Callable[[list[asyncpg.Record], list[asyncpg.Record]], Sequence[Delivery]]


async def fan_out_batch(db: Database, batch: int, plan: Plan) -> int | None:
    """Turn the next `batch` events of the outbox into deliveries, in feed order, in
    one transaction. `plan(events, webhooks)` returns the deliveries to write, in
    order. Returns how many events were read, or None when another process is
    fanning out."""
    async with db.transaction() as conn:
        position = await conn.fetchrow(_LOCK_POSITION)
        if position is None:
            await conn.execute(_ENSURE_POSITION)
            return None
        events = await events_db.feed(conn, (position["txid"], position["event_id"]), None, batch)
        if not events:
            return 0
        deliveries = plan(events, await conn.fetch(_ENABLED))
        if deliveries:
            columns = list(zip(*deliveries, strict=True))
            await conn.execute(_INSERT_DELIVERIES, *columns)
        last = events[-1]
        await conn.execute(_MOVE_POSITION, str(last["txid"]), last["id"])
        return len(events)


_ANY_ENABLED = "SELECT EXISTS (SELECT 1 FROM webhooks WHERE enabled)"


async def any_enabled(db: Database) -> bool:
    """Whether any webhook is enabled: whether events have anyone to go to."""
    return bool(await db.fetchval(_ANY_ENABLED))


# Committed events past the dispatch position that the feed does not show yet: an
# older transaction, anywhere on the server, is still in flight (db/events.py).
_HELD_BACK = """
SELECT EXISTS (
    SELECT 1 FROM events e, webhook_dispatch w
    WHERE w.id = 1 AND (e.txid, e.id) > (w.txid, w.event_id)
      AND e.txid >= pg_snapshot_xmin(pg_current_snapshot()))
"""


async def held_back(db: Database) -> bool:
    """Whether committed events wait for older transactions before they can be fanned out."""
    return bool(await db.fetchval(_HELD_BACK))


# --- the queues -------------------------------------------------------------------------

_CLAIMED = """
SELECT c.id, c.webhook_id, c.resource, c.event_id, c.event_type, c.attempts, c.lease_until,
       w.url, w.secret, w.events AS subscribed, e.data::text AS data, e.created_at AS event_created_at
FROM claimed c
JOIN webhooks w ON w.id = c.webhook_id
LEFT JOIN events e ON e.id = c.event_id
"""

# The due heads of the queues (the oldest pending delivery of each webhook and
# resource) of enabled webhooks, at most `$4 - busy` per webhook (what this process
# already sends to it), `$5` in all, oldest due first; each claimed with a lease.
# Webhooks this process already sends its most to are not even scanned (one index
# scan per webhook): a hanging receiver's backlog costs nothing here. The lease is
# re-checked on the row as it is when locked, so two processes never claim the
# same attempt.
_CLAIM = f"""
WITH room AS (
    SELECT w.id AS webhook_id, $4 - coalesce(busy.n, 0) AS room
    FROM webhooks w
    LEFT JOIN unnest($1::bigint[], $2::int[]) AS busy (webhook_id, n) ON busy.webhook_id = w.id
    WHERE w.enabled AND $4 - coalesce(busy.n, 0) > 0
), heads AS (
    SELECT room.room, h.*
    FROM room
    CROSS JOIN LATERAL (
        SELECT DISTINCT ON (d.resource) d.id, d.webhook_id, d.next_attempt_at, d.lease_until
        FROM webhook_deliveries d
        WHERE d.webhook_id = room.webhook_id AND d.status = 'pending'
        ORDER BY d.resource, d.id
    ) h
), ready AS (
    SELECT h.id, h.next_attempt_at, h.room,
           row_number() OVER (PARTITION BY h.webhook_id ORDER BY h.next_attempt_at, h.id) AS rank
    FROM heads h
    WHERE h.next_attempt_at <= now() AND (h.lease_until IS NULL OR h.lease_until < now())
), picked AS (
    SELECT id FROM ready WHERE rank <= room ORDER BY next_attempt_at, id LIMIT $5
), locked AS (
    SELECT d.id FROM webhook_deliveries d WHERE d.id IN (SELECT id FROM picked) FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d SET lease_until = now() + make_interval(secs => $3)
    FROM locked
    WHERE d.id = locked.id AND d.status = 'pending' AND (d.lease_until IS NULL OR d.lease_until < now())
    RETURNING d.*
)
{_CLAIMED}
"""


async def claim(
    db: Database, *, busy: dict[int, int], per_webhook: int, limit: int, lease_seconds: float
) -> list[asyncpg.Record]:
    return await db.fetch(_CLAIM, list(busy), list(busy.values()), lease_seconds, per_webhook, limit)


# The head of one queue, if it is due and free: what an actor sends next after a
# delivery of its queue is done.
_CLAIM_NEXT = f"""
WITH head AS (
    SELECT d.id FROM webhook_deliveries d
    WHERE d.webhook_id = $1 AND d.resource = $2 AND d.status = 'pending'
    ORDER BY d.id LIMIT 1
), locked AS (
    SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id AND w.enabled
    WHERE d.id = (SELECT id FROM head) AND d.next_attempt_at <= now()
    FOR UPDATE OF d SKIP LOCKED
), claimed AS (
    UPDATE webhook_deliveries d SET lease_until = now() + make_interval(secs => $3)
    FROM locked
    WHERE d.id = locked.id AND d.status = 'pending' AND (d.lease_until IS NULL OR d.lease_until < now())
    RETURNING d.*
)
{_CLAIMED}
"""


async def claim_next(db: Database, webhook_id: int, resource: str, lease_seconds: float) -> asyncpg.Record | None:
    return await db.fetchrow(_CLAIM_NEXT, webhook_id, resource, lease_seconds)


_RELEASE = "UPDATE webhook_deliveries SET lease_until = NULL WHERE id = $1 AND lease_until = $2"


async def release(db: Database, delivery_id: int, lease_until: Any) -> None:
    """Give a claimed delivery back unsent (this process could not take it on)."""
    await db.execute(_RELEASE, delivery_id, lease_until)


# The outcome of an attempt and its log entry, in one statement. Only under the lease
# it was claimed with: a process that outlived its lease records nothing. The log
# entry shows the attempt's own outcome: a delivery still pending after an attempt
# failed it (its retry is the next attempt, due at next_attempt_at).
_RECORD = """
WITH d AS (
    UPDATE webhook_deliveries SET
        status = $2,
        attempts = attempts + 1,
        next_attempt_at = CASE WHEN $3::float8 IS NULL THEN next_attempt_at
                               ELSE now() + make_interval(secs => $3::float8) END,
        lease_until = NULL,
        updated_at = now()
    WHERE id = $1 AND lease_until = $4
    RETURNING id, webhook_id, event_id, event_type, attempts, status, next_attempt_at
)
INSERT INTO webhook_attempts
    (delivery_id, webhook_id, event_id, event_type, attempt, status, response_status, error, next_attempt_at)
SELECT id, webhook_id, event_id, event_type, attempts,
       CASE WHEN status = 'pending' THEN 'failed' ELSE status END, $5, $6,
       CASE WHEN status = 'pending' THEN next_attempt_at END
FROM d
RETURNING id
"""


async def record(
    db: Database,
    delivery_id: int,
    lease_until: Any,
    *,
    status: str,
    retry_in: float | None,
    response_status: int | None,
    error: str | None,
) -> bool:
    """False when the lease had run out (another process may have the delivery)."""
    return await db.fetchval(_RECORD, delivery_id, status, retry_in, lease_until, response_status, error) is not None


# --- operations -------------------------------------------------------------------------

# Age of the oldest event not yet delivered: the first not yet fanned out (while a
# webhook is enabled), or the lowest-id one with a pending delivery (0 when there is
# none). Each part reads the first entry of an index, whatever the backlog.
_LAG = """
WITH position AS (SELECT txid, event_id FROM webhook_dispatch WHERE id = 1)
SELECT extract(epoch FROM now() - least(
    (SELECT e.created_at FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
     WHERE d.status = 'pending' ORDER BY d.event_id LIMIT 1),
    (SELECT e.created_at FROM events e, position p
     WHERE (e.txid, e.id) > (p.txid, p.event_id) AND EXISTS (SELECT 1 FROM webhooks WHERE enabled)
     ORDER BY e.txid, e.id LIMIT 1),
    now()
))::float8 AS lag,
(SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS pending
"""


async def backlog(db: Database) -> tuple[float, int]:
    """(outbox lag in seconds, pending deliveries)."""
    row = await db.fetchrow(_LAG)
    assert row is not None
    return row["lag"], row["pending"]


_PURGE_ATTEMPTS = "DELETE FROM webhook_attempts WHERE created_at < now() - make_interval(secs => $1)"
_PURGE_DELIVERIES = """
DELETE FROM webhook_deliveries WHERE status <> 'pending' AND updated_at < now() - make_interval(secs => $1)
"""


async def purge(db: Database, older_than_seconds: float) -> int:
    """Delete finished deliveries, log entries and delivered events older than the
    retention; returns how many rows went."""
    purged = 0
    async with db.transaction() as conn:
        for statement in (_PURGE_ATTEMPTS, _PURGE_DELIVERIES):
            purged += int((await conn.execute(statement, older_than_seconds)).split()[-1])
        purged += await events_db.purge(conn, older_than_seconds)
    return purged
