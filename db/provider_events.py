"""Events received from the payment provider (Stripe's webhook events): each is
handled once, whatever the provider's redeliveries."""

from __future__ import annotations

from db.pool import Executor

_SEEN = "SELECT EXISTS (SELECT 1 FROM provider_events WHERE id = $1)"
_RECORD = "INSERT INTO provider_events (id, type) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING"
_PURGE = "DELETE FROM provider_events WHERE received_at < now() - make_interval(secs => $1)"


async def seen(db: Executor, event_id: str) -> bool:
    found: bool = await db.fetchval(_SEEN, event_id)
    return found


async def record(db: Executor, event_id: str, event_type: str) -> None:
    """Note the event as handled (a second time changes nothing)."""
    await db.execute(_RECORD, event_id, event_type)


async def purge(db: Executor, older_than_seconds: float) -> int:
    status: str = await db.execute(_PURGE, older_than_seconds)
    return int(status.split()[-1])
