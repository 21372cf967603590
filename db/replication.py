"""Streaming replication positions: how far the primary has written and how far a
standby has replayed, for the standby monitor (server/runtime/standby.py).

Positions are WAL byte offsets (pg_lsn as a number): comparable across the two
servers of one replication stream.
"""

from __future__ import annotations

import asyncpg

STANDBY_MONITOR_APPLICATION = "storefront-standby-monitor"


async def connect(dsn: str, timeout: float) -> asyncpg.Connection:
    """The monitor's own connection (not pooled: it must go on when every pooled
    connection is busy; no prepared statements, so it works behind PgBouncer)."""
    return await asyncpg.connect(
        dsn, timeout=timeout, statement_cache_size=0,
        server_settings={"application_name": STANDBY_MONITOR_APPLICATION},
    )  # fmt: skip


# Where the primary's next WAL record goes: every transaction visible on the primary
# before this runs has its commit record below it. (The insert position, not the
# written one: with synchronous_commit=off a commit is visible before its WAL is
# written. At a page boundary it is past the next page's header, so an idle primary
# can look a few bytes ahead of a standby that has everything: the standby is then
# passed over until the next write, never used too early.)
_INSERTED = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"


async def inserted(conn: asyncpg.Connection, timeout: float) -> int:
    return int(await conn.fetchval(_INSERTED, timeout=timeout))


# NULL on a server that is not a standby (promoted, or never one).
_REPLAYED = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"


async def replayed(conn: asyncpg.Connection, timeout: float) -> int | None:
    """How far the standby has replayed (what its queries see), or None when the
    server is not in recovery."""
    value = await conn.fetchval(_REPLAYED, timeout=timeout)
    return None if value is None else int(value)
