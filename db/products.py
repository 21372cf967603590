"""The products table (the catalog)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from db.pool import Database, Executor
from db.refusals import Refusal


def _sku_taken(exc: asyncpg.UniqueViolationError) -> Refusal:
    if exc.constraint_name == "products_sku_live_key":
        return Refusal("sku_taken")
    raise exc


_CREATE = "SELECT * FROM create_product($1, $2, $3, $4, $5, $6)"


async def create(
    db: Executor, *, name: str, description: str, price: int, currency: str, stock: int, sku: str | None
) -> asyncpg.Record:
    """A new product, with its product.created event; raises 'sku_taken'."""
    try:
        row = await db.fetchrow(_CREATE, name, description, price, currency, stock, sku)
    except asyncpg.UniqueViolationError as exc:
        raise _sku_taken(exc) from None
    assert row is not None
    return row


_GET = "SELECT * FROM products WHERE id = $1 AND deleted_at IS NULL"


async def get(db: Database, product_id: int) -> asyncpg.Record | None:
    """A live product."""
    return await db.fetchrow(_GET, product_id)


_GET_MANY = "SELECT * FROM products WHERE id = ANY($1::bigint[]) AND deleted_at IS NULL"


async def get_many(db: Database, product_ids: Sequence[int]) -> list[asyncpg.Record]:
    """The live products among these ids, in no particular order."""
    return await db.fetch(_GET_MANY, product_ids)


_UPDATE = "SELECT * FROM update_product($1, $2, $3, $4, $5, $6, $7, $8)"


async def update(db: Executor, product_id: int, changes: dict[str, Any]) -> asyncpg.Record | None:
    """Change the named fields of a live product, with its product.updated event; None
    when there is no such product; raises 'sku_taken'."""
    try:
        return await db.fetchrow(
            _UPDATE,
            product_id,
            list(changes),
            changes.get("name"),
            changes.get("description"),
            changes.get("price"),
            changes.get("currency"),
            changes.get("stock"),
            changes.get("sku"),
        )
    except asyncpg.UniqueViolationError as exc:
        raise _sku_taken(exc) from None


_DELETE = "SELECT * FROM delete_product($1)"


async def delete(db: Executor, product_id: int) -> asyncpg.Record | None:
    """The product as it was deleted, with its product.deleted event; None if there
    was no such live product."""
    return await db.fetchrow(_DELETE, product_id)


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
        f"SELECT * FROM products WHERE {' AND '.join(conditions)} "
        f"ORDER BY {sort.column} {direction}, id {direction} LIMIT {arg(limit)}"
    )
    return query, args


async def page(
    db: Database,
    sort: Sort,
    filters: ListFilters,
    after: Sequence[Any] | None,
    limit: int,
    timeout_ms: int | None = None,
) -> list[asyncpg.Record]:
    """`limit` rows at most, after the keyset position `after`. With `timeout_ms` the
    database cancels the query after that long ('search_too_slow'): a setting local to
    its transaction, which also holds behind PgBouncer."""
    query, args = list_query(sort, filters, after, limit)
    if timeout_ms is None:
        return await db.fetch(query, *args)
    try:
        async with db.transaction() as conn:
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            return await conn.fetch(query, *args)
    except asyncpg.QueryCanceledError:
        raise Refusal("search_too_slow") from None


async def seed(conn: asyncpg.Connection, records: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> None:
    """Bulk-load products with COPY."""
    await conn.copy_records_to_table("products", records=records, columns=list(columns))
