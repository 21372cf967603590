"""The product catalog: admin changes and the keyset-paginated list."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from db import products as products_db
from db.refusals import Refusal
from server.domain.context import Context
from server.domain.pages import keyset_page
from server.runtime.standby import ReadTarget

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What a catalog list may be filtered by (the database builds its query from it).
ListFilters = products_db.ListFilters


async def create(ctx: Context, fields: dict[str, Any]) -> asyncpg.Record:
    """A new product (and its product.created event)."""
    return await products_db.create(ctx.db, **fields)


async def get(reads: ReadTarget, product_id: int) -> asyncpg.Record:
    row = await products_db.get(reads.db, product_id)
    if row is None:
        raise Refusal("product_not_found")
    return row


async def get_many(reads: ReadTarget, product_ids: Sequence[int]) -> dict[int, asyncpg.Record]:
    """The live products among these ids, by id."""
    return {row["id"]: row for row in await products_db.get_many(reads.db, product_ids)}


async def update(ctx: Context, product_id: int, changes: dict[str, Any]) -> asyncpg.Record:
    """The product with `changes` applied (and its product.updated event)."""
    row = await products_db.update(ctx.db, product_id, changes)
    if row is None:
        raise Refusal("product_not_found")
    return row


async def delete(ctx: Context, product_id: int) -> None:
    """Take a product out of the catalog (and write its product.deleted event)."""
    if await products_db.delete(ctx.db, product_id) is None:
        raise Refusal("product_not_found")


def _encode_key(value: Any) -> Any:
    # Timestamps travel as integer microseconds: exact, unlike a float or a
    # re-parsed string with a lost precision.
    if isinstance(value, datetime):
        elapsed = value - _EPOCH
        return (elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds
    return value


def _decode_key(sort: products_db.Sort, value: Any) -> Any:
    if sort.column == "created_at":
        return _EPOCH + timedelta(microseconds=value)
    return value


async def page(
    ctx: Context,
    reads: ReadTarget,
    sort_name: str,
    filters: products_db.ListFilters,
    cursor: str | None,
    limit: int,
) -> tuple[list[asyncpg.Record], str | None]:
    sort = products_db.SORTS[sort_name]

    # A filtered list may have to look at much of the catalog: it runs on the search
    # connections, bounded in number and in time; the plain keyset walk never does.
    async def fetch(after: list[Any] | None, limit: int) -> list[asyncpg.Record]:
        position = None if after is None else (_decode_key(sort, after[0]), after[1])
        if filters.any:
            timeout = ctx.config.catalog_statement_timeout_ms
            return await products_db.page(reads.search_db, sort, filters, position, limit, timeout)
        return await products_db.page(reads.db, sort, filters, position, limit)

    # The cursor is bound to the sort and the filters: reusing it with others is refused.
    scope = f"products:{sort.name}:{filters.q}:{filters.min_price}:{filters.max_price}:{filters.in_stock}"
    return await keyset_page(
        ctx, scope, cursor, limit, fetch, position=lambda row: [_encode_key(row[sort.column]), row["id"]]
    )
