"""The address book (sql/026_checkout.sql): each user's addresses, oldest first.

An address is also what an order ships to: `PostalAddress`, the fields an order keeps
as its snapshot (the `postal_address` type).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg

from db.pool import Database
from db.refusals import refused


class PostalAddress(NamedTuple):
    """The fields of an address, in the order of the `postal_address` type."""

    name: str
    line1: str
    line2: str
    city: str
    region: str
    postal_code: str
    country: str
    phone: str


_CREATE = "SELECT (r.created).*, r.refusal FROM create_address($1, $2, $3) r"


async def create(db: Database, user_id: int, address: PostalAddress, most: int) -> asyncpg.Record:
    """A new address of the user's; raises 'too_many_addresses' when the user has `most`."""
    row = await db.fetchrow(_CREATE, user_id, address, most)
    assert row is not None
    return refused(row)


_GET = "SELECT * FROM addresses WHERE id = $1 AND user_id = $2"


async def get(db: Database, user_id: int, address_id: int) -> asyncpg.Record | None:
    """One of the user's addresses (None: no such address of theirs)."""
    return await db.fetchrow(_GET, address_id, user_id)


_PAGE = "SELECT * FROM addresses WHERE user_id = $1 AND id > coalesce($2::bigint, 0) ORDER BY id LIMIT $3"


async def page(db: Database, user_id: int, after_id: int | None, limit: int) -> list[asyncpg.Record]:
    """The user's addresses, oldest first, `limit` at most, after `after_id`."""
    return await db.fetch(_PAGE, user_id, after_id, limit)


# Only the fields named in $3 change.
_UPDATE = """
UPDATE addresses SET
    name = CASE WHEN 'name' = ANY ($3::text[]) THEN $4 ELSE name END,
    line1 = CASE WHEN 'line1' = ANY ($3::text[]) THEN $5 ELSE line1 END,
    line2 = CASE WHEN 'line2' = ANY ($3::text[]) THEN $6 ELSE line2 END,
    city = CASE WHEN 'city' = ANY ($3::text[]) THEN $7 ELSE city END,
    region = CASE WHEN 'region' = ANY ($3::text[]) THEN $8 ELSE region END,
    postal_code = CASE WHEN 'postal_code' = ANY ($3::text[]) THEN $9 ELSE postal_code END,
    country = CASE WHEN 'country' = ANY ($3::text[]) THEN $10 ELSE country END,
    phone = CASE WHEN 'phone' = ANY ($3::text[]) THEN $11 ELSE phone END,
    updated_at = now()
WHERE id = $1 AND user_id = $2
RETURNING *
"""


async def update(db: Database, user_id: int, address_id: int, changes: dict[str, Any]) -> asyncpg.Record | None:
    """Change the named fields of one of the user's addresses; None when there is none."""
    return await db.fetchrow(
        _UPDATE, address_id, user_id, list(changes), *(changes.get(name) for name in PostalAddress._fields)
    )


_DELETE = "DELETE FROM addresses WHERE id = $1 AND user_id = $2"


async def delete(db: Database, user_id: int, address_id: int) -> bool:
    """Remove one of the user's addresses (orders keep their snapshots of it)."""
    return await db.execute(_DELETE, address_id, user_id) == "DELETE 1"
