"""Discount codes (sql/026_checkout.sql). Their redemptions are counted by the order
functions (sql/functions/checkout.sql), under the discount's row lock; here are the
admin's reads and changes. Deleting a code only hides it: orders keep their discount,
and the code may be given to a new discount."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from db.pool import Database
from db.refusals import Refusal, refused

# Each constraint of the table that a request can break, as the refusal that says so.
_REFUSALS = {
    "discounts_code_live_key": "discount_code_taken",
    "discounts_value_check": "discount_value_invalid",
    "discounts_window_check": "discount_window_empty",
    "discounts_redemptions_check": "discount_below_redeemed",
}


def _refusal(exc: asyncpg.IntegrityConstraintViolationError) -> Refusal:
    code = _REFUSALS.get(getattr(exc, "constraint_name", None) or "")
    if code is None:
        raise exc
    return Refusal(code)


# A discount as the API shows it: its row and its times_redeemed.
_COLUMNS = "d.*, times_redeemed(d) AS times_redeemed"
_CREATE = f"SELECT {_COLUMNS} FROM create_discount($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) d"


async def create(
    db: Database,
    *,
    code: str,
    kind: str,
    value: int,
    currency: str,
    min_subtotal: int,
    starts_at: datetime | None,
    ends_at: datetime | None,
    max_redemptions: int | None,
    max_per_customer: int | None,
    enabled: bool,
) -> asyncpg.Record:
    """A new discount; raises 'discount_code_taken' (a live discount has the code),
    'discount_value_invalid', 'discount_window_empty'."""
    try:
        row = await db.fetchrow(
            _CREATE,
            code,
            kind,
            value,
            currency,
            min_subtotal,
            starts_at,
            ends_at,
            max_redemptions,
            max_per_customer,
            enabled,
        )
    except (asyncpg.UniqueViolationError, asyncpg.CheckViolationError) as exc:
        raise _refusal(exc) from None
    assert row is not None
    return row


_GET = f"SELECT {_COLUMNS} FROM discounts d WHERE d.id = $1 AND d.deleted_at IS NULL"


async def get(db: Database, discount_id: int) -> asyncpg.Record | None:
    return await db.fetchrow(_GET, discount_id)


_PAGE = f"""
SELECT {_COLUMNS} FROM discounts d
WHERE d.deleted_at IS NULL AND d.id > coalesce($1::bigint, 0)
ORDER BY d.id
LIMIT $2
"""


async def page(db: Database, after_id: int | None, limit: int) -> list[asyncpg.Record]:
    """Live discounts, oldest first, `limit` at most, after `after_id`."""
    return await db.fetch(_PAGE, after_id, limit)


_UPDATE = """
SELECT (r.changed).*, times_redeemed(r.changed) AS times_redeemed, r.refusal
FROM update_discount($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) r
"""


async def update(db: Database, discount_id: int, changes: dict[str, Any]) -> asyncpg.Record:
    """Change the named fields of a live discount (under its row's strongest lock, so
    no order takes it meanwhile). Raises 'discount_not_found', 'discount_value_invalid',
    'discount_window_empty', 'discount_below_redeemed'."""
    try:
        row = await db.fetchrow(
            _UPDATE,
            discount_id,
            list(changes),
            changes.get("kind"),
            changes.get("value"),
            changes.get("currency"),
            changes.get("min_subtotal"),
            changes.get("starts_at"),
            changes.get("ends_at"),
            changes.get("max_redemptions"),
            changes.get("max_per_customer"),
            changes.get("enabled"),
        )
    except asyncpg.CheckViolationError as exc:
        raise _refusal(exc) from None
    assert row is not None
    return refused(row)


_DELETE = "UPDATE discounts SET deleted_at = now(), updated_at = now() WHERE id = $1 AND deleted_at IS NULL"


async def delete(db: Database, discount_id: int) -> bool:
    """Hide a live discount: its code is unknown from now on (orders keep their discount)."""
    return await db.execute(_DELETE, discount_id) == "UPDATE 1"


# --- invariants -------------------------------------------------------------------------

_REDEMPTION_VIOLATIONS = """
SELECT d.id, d.code, d.max_redemptions, d.redeemed, coalesce(o.held, 0) AS held
FROM discounts d
LEFT JOIN (
    SELECT discount_id, count(*) AS held FROM orders
    WHERE discount_id IS NOT NULL AND status = ANY ($1::text[])
    GROUP BY discount_id
) o ON o.discount_id = d.id
WHERE d.max_redemptions IS NOT NULL AND (d.redeemed <> coalesce(o.held, 0) OR d.redeemed > d.max_redemptions)
ORDER BY d.id
"""


_UNKNOWN_DISCOUNTS = """
SELECT o.id, o.discount_id FROM orders o
WHERE o.discount_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM discounts d WHERE d.id = o.discount_id)
ORDER BY o.id
"""


async def unknown_discounts(db: Database) -> list[asyncpg.Record]:
    """Orders whose discount_id names no discount (it has no foreign key)."""
    return await db.fetch(_UNKNOWN_DISCOUNTS)


async def redemption_violations(db: Database, redeeming: list[str]) -> list[asyncpg.Record]:
    """Discounts with max_redemptions whose kept count is not the number of orders in
    a `redeeming` status that have them, or is above max_redemptions (a code without
    one is counted from its orders, so it cannot disagree)."""
    return await db.fetch(_REDEMPTION_VIOLATIONS, redeeming)
