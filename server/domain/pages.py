"""Keyset pages, one way for every list: a page asks the database for one row more
than it shows (that row tells a next page exists), and the next page's cursor is the
position of its last row, signed together with the query it belongs to
(server/domain/cursors.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from server.domain.context import Context

# A page's rows: the database's rows after `position` (None: from the start), `limit`
# at most.
Fetch = Callable[[list[Any] | None, int], Awaitable[list[asyncpg.Record]]]


async def keyset_page(
    ctx: Context,
    scope: str,
    cursor: str | None,
    limit: int,
    fetch: Fetch,
    position: Callable[[asyncpg.Record], list[Any]] = lambda row: [row["id"]],
) -> tuple[list[asyncpg.Record], str | None]:
    """The page after `cursor` (a cursor of `scope`, the list and its filters) and the
    cursor of the next page (None on the last). `position`: a row's place in the
    list's order (its id, unless the list sorts by something else)."""
    after = None if cursor is None else ctx.cursors.decode(scope, cursor)
    rows = await fetch(after, limit + 1)
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], ctx.cursors.encode(scope, position(rows[limit - 1]))
