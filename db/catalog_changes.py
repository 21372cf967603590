"""Catalog changes as sql/014_caching.sql records them: the rows every process polls,
and the NOTICE a writing session receives."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

# Sessions whose application_name starts with "storefront" (the service's pool) get
# their own changes to products back at once as a NOTICE starting with this.
NOTICE_PREFIX = "catalog_changes:"
WATCHER_APPLICATION = "storefront-catalog-watch"

# None stands for "every product" (a TRUNCATE).
ProductIds = frozenset[int] | None


def parse_ids(text: str) -> ProductIds:
    if text == "*":
        return None
    return frozenset(int(part) for part in text.split(","))


def is_change_notice(message: str) -> bool:
    return message.startswith(NOTICE_PREFIX)


def notice_ids(message: str) -> ProductIds:
    """The ids a catalog change NOTICE names."""
    return parse_ids(message[len(NOTICE_PREFIX) :])


async def connect(dsn: str, timeout: float) -> asyncpg.Connection:
    """The watcher's own connection (not pooled: the watch must go on when every
    pooled connection is busy, and an operator can find it by application name)."""
    return await asyncpg.connect(
        dsn, timeout=timeout, statement_cache_size=0, server_settings={"application_name": WATCHER_APPLICATION}
    )


@dataclass(frozen=True)
class Change:
    xid: int
    product_ids: ProductIds


# One statement, so one snapshot: the horizon is the oldest transaction still running
# in it, and every change not yet visible here belongs to a transaction at or above it.
_POLL = """
SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon,
       coalesce((SELECT array_agg(xid::text || ':' || coalesce(array_to_string(product_ids, ','), '*'))
                   FROM catalog_changes WHERE xid >= $1::xid8), '{}') AS changes
"""


async def poll(conn: asyncpg.Connection, horizon: int, timeout: float) -> tuple[int, list[Change]]:
    """The changes of transactions at or above `horizon` that are visible now, and
    the horizon to ask from next time."""
    row = await conn.fetchrow(_POLL, horizon, timeout=timeout)
    assert row is not None
    changes = []
    for entry in row["changes"]:
        xid, _, ids = entry.partition(":")
        changes.append(Change(int(xid), parse_ids(ids)))
    return int(row["horizon"]), changes


_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())"


async def horizon(conn: asyncpg.Connection, timeout: float) -> int:
    return int(await conn.fetchval(_HORIZON, timeout=timeout))


# Rows of transactions below a horizon sampled long ago: those transactions ended
# before it was sampled, and every watcher has polled many times since.
_PURGE = "DELETE FROM catalog_changes WHERE xid < $1::xid8"


async def purge(conn: asyncpg.Connection, below: int, timeout: float) -> None:
    await conn.execute(_PURGE, below, timeout=timeout)
