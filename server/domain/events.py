"""Events: what happened, for the shop's other systems (the feed and webhooks).

`emit` is called inside the transaction of the change it reports (see db/events.py
and sql/009_events.sql), with the object as the API returns it at that moment.
"""

from __future__ import annotations

from typing import Any

from db import events as events_db
from db.pool import Executor
from server.runtime.jsonio import dumps


async def emit(conn: Executor, event_type: str, data: dict[str, Any]) -> None:
    await events_db.append(conn, event_type, dumps(data).decode())
