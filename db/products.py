"""The products table (the catalog)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from db.pool import Database, Executor

PRODUCT_FIELDS = ("id", "name", "description", "price", "currency", "stock", "sku", "created_at", "updated_at")
PRODUCT_COLUMNS = ", ".join(PRODUCT_FIELDS)


class SkuTaken(Exception):
    pass


def _raise_if_sku_taken(exc: asyncpg.UniqueViolationError) -> None:
    if exc.constraint_name == "products_sku_live_key":
        raise SkuTaken() from None


_INSERT = f"""
INSERT INTO products (name, description, price, currency, stock, stock_received, sku)
VALUES ($1, $2, $3, $4, $5::int, $5::int, $6)
RETURNING {PRODUCT_COLUMNS}
"""


async def create(
    db: Executor, *, name: str, description: str, price: int, currency: str, stock: int, sku: str | None
) -> asyncpg.Record:
    try:
        row = await db.fetchrow(_INSERT, name, description, price, currency, stock, sku)
    except asyncpg.UniqueViolationError as exc:
        _raise_if_sku_taken(exc)
        raise
    assert row is not None
    return row


_GET = f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id = $1 AND deleted_at IS NULL"


async def get(db: Database, product_id: int) -> asyncpg.Record | None:
    """A live product."""
    return await db.fetchrow(_GET, product_id)


# Only the columns the request names change; a change of stock also counts as stock
# received (or removed), which keeps the stock invariant true across restocking.
_UPDATABLE = ("name", "description", "price", "currency", "stock", "sku")


async def update(db: Executor, product_id: int, changes: dict[str, Any]) -> asyncpg.Record | None:
    assignments = ["updated_at = now()"]
    args: list[Any] = [product_id]
    for column in _UPDATABLE:
        if column in changes:
            args.append(changes[column])
            if column == "stock":
                assignments.append(f"stock_received = stock_received + (${len(args)} - stock)")
            assignments.append(f"{column} = ${len(args)}")
    query = (
        f"UPDATE products SET {', '.join(assignments)} WHERE id = $1 AND deleted_at IS NULL RETURNING {PRODUCT_COLUMNS}"
    )
    try:
        return await db.fetchrow(query, *args)
    except asyncpg.UniqueViolationError as exc:
        _raise_if_sku_taken(exc)
        raise


_SOFT_DELETE = f"""
UPDATE products SET deleted_at = now(), updated_at = now() WHERE id = $1 AND deleted_at IS NULL
RETURNING {PRODUCT_COLUMNS}
"""


async def soft_delete(db: Executor, product_id: int) -> asyncpg.Record | None:
    """The product as it was deleted; None if there was no such live product."""
    return await db.fetchrow(_SOFT_DELETE, product_id)


@dataclass(frozen=True)
class Sort:
    column: str
    descending: bool

    @property
    def name(self) -> str:
        return ("-" if self.descending else "") + self.column


SORTS = {s.name: s for s in (Sort(c, d) for c in ("created_at", "price", "name") for d in (False, True))}


@dataclass(frozen=True)
class ListFilters:
    q: str | None = None
    min_price: int | None = None
    max_price: int | None = None
    in_stock: bool = False

    @property
    def any(self) -> bool:
        return self.q is not None or self.min_price is not None or self.max_price is not None or self.in_stock


def _like_literal(q: str) -> str:
    """`q` as a quoted ILIKE pattern matching it as a substring (%, _ and \\ literal).

    Quoting only doubles single quotes: standard_conforming_strings is on (checked on
    every new connection, db/pool.py) and the value has no NUL (validated).
    """
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("'", "''")
    return f"'%{escaped}%'"


def list_query(sort: Sort, filters: ListFilters, after: Sequence[Any] | None, limit: int) -> tuple[str, list[Any]]:
    """The keyset query for one page, with only the conditions in use.

    The search term and price bounds are written into the statement, not passed as
    parameters: how many rows they match decides the best plan (walk the sort index,
    or find the matches by trigram or price index and sort those), so each distinct
    filter is planned for its values (see sql/005_plan_cache.sql). The cursor and
    the limit stay parameters.
    """
    conditions = ["deleted_at IS NULL"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if filters.q is not None:
        conditions.append(f"name ILIKE {_like_literal(filters.q)}")
    if filters.min_price is not None:
        conditions.append(f"price >= {int(filters.min_price)}")
    if filters.max_price is not None:
        conditions.append(f"price <= {int(filters.max_price)}")
    if filters.in_stock:
        conditions.append("stock > 0")
    if after is not None:
        op = "<" if sort.descending else ">"
        conditions.append(f"({sort.column}, id) {op} ({arg(after[0])}, {arg(after[1])})")
    direction = "DESC" if sort.descending else "ASC"
    query = (
        f"SELECT {PRODUCT_COLUMNS} FROM products WHERE {' AND '.join(conditions)} "
        f"ORDER BY {sort.column} {direction}, id {direction} LIMIT {arg(limit)}"
    )
    return query, args


class QueryTooSlow(Exception):
    """The database cancelled the list at its statement timeout."""


async def list_page(
    db: Database,
    sort: Sort,
    filters: ListFilters,
    after: Sequence[Any] | None,
    limit: int,
    timeout_ms: int | None = None,
) -> list[asyncpg.Record]:
    """Up to `limit` + 1 rows (the extra one tells that a next
    page exists). With `timeout_ms` the database cancels the query after that long
    (QueryTooSlow): a setting local to its transaction, which also holds behind
    PgBouncer."""
    query, args = list_query(sort, filters, after, limit + 1)
    if timeout_ms is None:
        return await db.fetch(query, *args)
    try:
        async with db.transaction() as conn:
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            return await conn.fetch(query, *args)
    except asyncpg.QueryCanceledError:
        raise QueryTooSlow() from None


async def seed(conn: asyncpg.Connection, records: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> None:
    """Bulk-load products with COPY."""
    await conn.copy_records_to_table("products", records=records, columns=list(columns))
