"""The product catalog: admin changes and the keyset-paginated list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from db import products as products_db
from server.domain.context import Context
from server.runtime.problems import Conflict, NotFound

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def product_json(row: asyncpg.Record) -> dict[str, Any]:
    """A product as the API shows it: every column its query selects, by name."""
    return dict(row.items())


async def create(ctx: Context, fields: dict[str, Any]) -> asyncpg.Record:
    try:
        return await products_db.create(ctx.db, **fields)
    except products_db.SkuTaken:
        raise Conflict("a product with this sku exists") from None


async def get(ctx: Context, product_id: int) -> asyncpg.Record:
    row = await products_db.get(ctx.db, product_id)
    if row is None:
        raise NotFound("no such product")
    return row


async def update(ctx: Context, product_id: int, changes: dict[str, Any]) -> asyncpg.Record:
    try:
        row = await products_db.update(ctx.db, product_id, changes)
    except products_db.SkuTaken:
        raise Conflict("a product with this sku exists") from None
    if row is None:
        raise NotFound("no such product")
    return row


async def delete(ctx: Context, product_id: int) -> None:
    if not await products_db.soft_delete(ctx.db, product_id):
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
    ctx: Context, sort_name: str, filters: products_db.ListFilters, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    sort = products_db.SORTS[sort_name]
    # The cursor is bound to the sort and the filters: reusing it with others is a 422.
    scope = f"products:{sort.name}:{filters.q}:{filters.min_price}:{filters.max_price}:{filters.in_stock}"
    after = None
    if cursor is not None:
        key, last_id = ctx.cursors.decode(scope, cursor)
        after = (_decode_key(sort, key), last_id)
    rows = await products_db.list_page(ctx.db, sort, filters, after, limit)
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = ctx.cursors.encode(scope, [_encode_key(last[sort.column]), last["id"]])
    return rows[:limit], next_cursor
