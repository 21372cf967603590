"""Shipping methods (sql/026_checkout.sql): what an order may ship with. Deleting one
only hides it (orders keep their snapshot of it); reads see live rows only."""

from __future__ import annotations

from typing import Any

import asyncpg

from db.pool import Database

_INSERT = """
INSERT INTO shipping_methods (name, price, currency, countries, free_over, enabled)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *
"""


async def create(
    db: Database,
    *,
    name: str,
    price: int,
    currency: str,
    countries: list[str],
    free_over: int | None,
    enabled: bool,
) -> asyncpg.Record:
    row = await db.fetchrow(_INSERT, name, price, currency, countries, free_over, enabled)
    assert row is not None
    return row


_GET = "SELECT * FROM shipping_methods WHERE id = $1 AND deleted_at IS NULL AND ($2 OR enabled)"


async def get(db: Database, method_id: int, *, disabled_too: bool) -> asyncpg.Record | None:
    """A live method; a disabled one only with `disabled_too`."""
    return await db.fetchrow(_GET, method_id, disabled_too)


_PAGE = """
SELECT * FROM shipping_methods
WHERE deleted_at IS NULL AND ($1 OR enabled) AND id > coalesce($2::bigint, 0)
ORDER BY id
LIMIT $3
"""


async def page(db: Database, *, disabled_too: bool, after_id: int | None, limit: int) -> list[asyncpg.Record]:
    """Live methods, oldest first (disabled ones only with `disabled_too`), `limit` at
    most, after `after_id`."""
    return await db.fetch(_PAGE, disabled_too, after_id, limit)


# Only the fields named in $2 change.
_UPDATE = """
UPDATE shipping_methods SET
    name = CASE WHEN 'name' = ANY ($2::text[]) THEN $3 ELSE name END,
    price = CASE WHEN 'price' = ANY ($2::text[]) THEN $4 ELSE price END,
    currency = CASE WHEN 'currency' = ANY ($2::text[]) THEN $5 ELSE currency END,
    countries = CASE WHEN 'countries' = ANY ($2::text[]) THEN $6 ELSE countries END,
    free_over = CASE WHEN 'free_over' = ANY ($2::text[]) THEN $7 ELSE free_over END,
    enabled = CASE WHEN 'enabled' = ANY ($2::text[]) THEN $8 ELSE enabled END,
    updated_at = now()
WHERE id = $1 AND deleted_at IS NULL
RETURNING *
"""


async def update(db: Database, method_id: int, changes: dict[str, Any]) -> asyncpg.Record | None:
    """Change the named fields of a live method; None when there is none."""
    return await db.fetchrow(
        _UPDATE,
        method_id,
        list(changes),
        changes.get("name"),
        changes.get("price"),
        changes.get("currency"),
        changes.get("countries"),
        changes.get("free_over"),
        changes.get("enabled"),
    )


_DELETE = "UPDATE shipping_methods SET deleted_at = now(), updated_at = now() WHERE id = $1 AND deleted_at IS NULL"


async def delete(db: Database, method_id: int) -> bool:
    """Hide a live method: no order can choose it any more (orders keep their snapshot)."""
    return await db.execute(_DELETE, method_id) == "UPDATE 1"
