"""The events table: the outbox that the feed and webhook deliveries read."""

from __future__ import annotations

from db.pool import Executor

_APPEND = "INSERT INTO events (type, data) VALUES ($1, $2::jsonb)"


async def append(conn: Executor, event_type: str, data_json: str) -> None:
    """Record an event (its data already JSON). Call it on the connection of the
    transaction that makes the change, so the event commits, or rolls back, with it."""
    await conn.execute(_APPEND, event_type, data_json)
