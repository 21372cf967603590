"""Discount codes (sql/023_checkout.sql). Their redemptions are counted by the order
functions (sql/functions/checkout.sql), under the discount's row lock; here are the
admin's reads and changes. Deleting a code only hides it: orders keep their discount,
and the code may be given to a new discount."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from db.pool import Database
from db.refusals import Refusal

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


_INSERT = """
INSERT INTO discounts (code, kind, value, currency, min_subtotal, starts_at, ends_at,
                       max_redemptions, max_per_customer, enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING *
"""


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
            _INSERT,
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


_GET = "SELECT * FROM discounts WHERE id = $1 AND deleted_at IS NULL"


async def get(db: Database, discount_id: int) -> asyncpg.Record | None:
    return await db.fetchrow(_GET, discount_id)


_PAGE = "SELECT * FROM discounts WHERE deleted_at IS NULL AND id > coalesce($1::bigint, 0) ORDER BY id LIMIT $2"


async def page(db: Database, after_id: int | None, limit: int) -> list[asyncpg.Record]:
    """Live discounts, oldest first, `limit` at most, after `after_id`."""
    return await db.fetch(_PAGE, after_id, limit)


# Only the fields named in $2 change; the row's lock orders it with the orders that
# redeem the code, so max_redemptions is compared with the current times_redeemed.
_UPDATE = """
UPDATE discounts SET
    kind = CASE WHEN 'kind' = ANY ($2::text[]) THEN $3 ELSE kind END,
    value = CASE WHEN 'value' = ANY ($2::text[]) THEN $4 ELSE value END,
    currency = CASE WHEN 'currency' = ANY ($2::text[]) THEN $5 ELSE currency END,
    min_subtotal = CASE WHEN 'min_subtotal' = ANY ($2::text[]) THEN $6 ELSE min_subtotal END,
    starts_at = CASE WHEN 'starts_at' = ANY ($2::text[]) THEN $7 ELSE starts_at END,
    ends_at = CASE WHEN 'ends_at' = ANY ($2::text[]) THEN $8 ELSE ends_at END,
    max_redemptions = CASE WHEN 'max_redemptions' = ANY ($2::text[]) THEN $9 ELSE max_redemptions END,
    max_per_customer = CASE WHEN 'max_per_customer' = ANY ($2::text[]) THEN $10 ELSE max_per_customer END,
    enabled = CASE WHEN 'enabled' = ANY ($2::text[]) THEN $11 ELSE enabled END,
    updated_at = now()
WHERE id = $1 AND deleted_at IS NULL
RETURNING *
"""


async def update(db: Database, discount_id: int, changes: dict[str, Any]) -> asyncpg.Record | None:
    """Change the named fields of a live discount; None when there is none. Raises
    'discount_value_invalid', 'discount_window_empty', 'discount_below_redeemed'."""
    try:
        return await db.fetchrow(
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


_DELETE = "UPDATE discounts SET deleted_at = now(), updated_at = now() WHERE id = $1 AND deleted_at IS NULL"


async def delete(db: Database, discount_id: int) -> bool:
    """Hide a live discount: its code is unknown from now on (orders keep their discount)."""
    return await db.execute(_DELETE, discount_id) == "UPDATE 1"


# --- invariants -------------------------------------------------------------------------

_REDEMPTION_VIOLATIONS = """
SELECT d.id, d.code, d.times_redeemed, d.max_redemptions, coalesce(o.held, 0) AS held
FROM discounts d
LEFT JOIN (
    SELECT discount_id, count(*) AS held FROM orders
    WHERE discount_id IS NOT NULL AND status = ANY ($1::text[])
    GROUP BY discount_id
) o ON o.discount_id = d.id
WHERE d.times_redeemed <> coalesce(o.held, 0) OR d.times_redeemed > d.max_redemptions
ORDER BY d.id
"""


async def redemption_violations(db: Database, redeeming: list[str]) -> list[asyncpg.Record]:
    """Discounts whose times_redeemed is not the number of orders in a `redeeming`
    status that have them, or is above max_redemptions."""
    return await db.fetch(_REDEMPTION_VIOLATIONS, redeeming)
