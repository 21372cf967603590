"""The product catalog: admin changes and the keyset-paginated list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from db import products as products_db
from server.domain.context import Context
from server.domain.events import emit
from server.runtime.problems import Conflict, NotFound, ServiceUnavailable
from server.runtime.standby import ReadTarget

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def product_json(row: asyncpg.Record) -> dict[str, Any]:
    """A product as the API shows it, by column name (a row may carry more)."""
    return {name: row[name] for name in products_db.PRODUCT_FIELDS}


async def create(ctx: Context, fields: dict[str, Any]) -> asyncpg.Record:
    try:
        async with ctx.db.transaction() as conn:
            row = await products_db.create(conn, **fields)
            await emit(conn, "product.created", product_json(row))
    except products_db.SkuTaken:
        raise Conflict("a product with this sku exists") from None
    return row


async def get(reads: ReadTarget, product_id: int) -> asyncpg.Record:
    row = await products_db.get(reads.db, product_id)
    if row is None:
        raise NotFound("no such product")
    return row


async def update(ctx: Context, product_id: int, changes: dict[str, Any]) -> asyncpg.Record:
    try:
        async with ctx.db.transaction() as conn:
            row = await products_db.update(conn, product_id, changes)
            if row is not None:
                await emit(conn, "product.updated", product_json(row))
    except products_db.SkuTaken:
        raise Conflict("a product with this sku exists") from None
    if row is None:
        raise NotFound("no such product")
    return row


async def delete(ctx: Context, product_id: int) -> None:
    async with ctx.db.transaction() as conn:
        row = await products_db.soft_delete(conn, product_id)
        if row is not None:
            await emit(conn, "product.deleted", product_json(row))
    if row is None:
        raise NotFound("no such product")


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


async def list_page(
    ctx: Context,
    reads: ReadTarget,
    sort_name: str,
    filters: products_db.ListFilters,
    cursor: str | None,
    limit: int,
) -> tuple[list[asyncpg.Record], str | None]:
    sort = products_db.SORTS[sort_name]
    # The cursor is bound to the sort and the filters: reusing it with others is a 422.
    scope = f"products:{sort.name}:{filters.q}:{filters.min_price}:{filters.max_price}:{filters.in_stock}"
    after = None
    if cursor is not None:
        key, last_id = ctx.cursors.decode(scope, cursor)
        after = (_decode_key(sort, key), last_id)
    # A filtered list may have to look at much of the catalog: it runs on the search
    # connections, bounded in number and in time; the plain keyset walk never does.
    try:
        if filters.any:
            timeout = ctx.config.catalog_statement_timeout_ms
            rows = await products_db.list_page(reads.search_db, sort, filters, after, limit, timeout)
        else:
            rows = await products_db.list_page(reads.db, sort, filters, after, limit)
    except products_db.QueryTooSlow:
        raise ServiceUnavailable("this search takes too long; narrow it down", retry_after=1) from None
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = ctx.cursors.encode(scope, [_encode_key(last[sort.column]), last["id"]])
    return rows[:limit], next_cursor
