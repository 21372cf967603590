"""Discount codes: the admin's to make, change and delete. Orders redeem them in the
statement that reserves their stock (sql/functions/checkout.sql: the rules, the
redemption limits and the guessing limit are checked there); `times_redeemed` counts
the orders that hold (pending) or used (paid and later) a code."""

from __future__ import annotations

from typing import Any

import asyncpg

from db import discounts as discounts_db
from db.orders import GuessLimit
from db.refusals import Refusal
from server.domain.context import Context
from server.domain.pages import keyset_page
from server.runtime.config import Config

# The window of DISCOUNT_MAX_UNKNOWN_PER_USER: a customer's unknown codes per hour.
GUESS_WINDOW_SECONDS = 3600.0


def guess_limit(config: Config) -> GuessLimit:
    """How many unknown codes a customer may try (the contract's code guessing)."""
    return GuessLimit(config.discount_max_unknown_per_user, GUESS_WINDOW_SECONDS)


async def create(ctx: Context, fields: dict[str, Any]) -> asyncpg.Record:
    return await discounts_db.create(ctx.db, **fields)


async def get(ctx: Context, discount_id: int) -> asyncpg.Record:
    row = await discounts_db.get(ctx.db, discount_id)
    if row is None:
        raise Refusal("discount_not_found")
    return row


async def page(ctx: Context, cursor: str | None, limit: int) -> tuple[list[asyncpg.Record], str | None]:
    """Discounts, oldest first."""

    async def fetch(after: list[int] | None, limit: int) -> list[asyncpg.Record]:
        return await discounts_db.page(ctx.db, None if after is None else after[0], limit)

    return await keyset_page(ctx, "discounts", cursor, limit, fetch)


async def update(ctx: Context, discount_id: int, changes: dict[str, Any]) -> asyncpg.Record:
    return await discounts_db.update(ctx.db, discount_id, changes)


async def delete(ctx: Context, discount_id: int) -> None:
    """Delete a code: unknown from now on; orders that hold or used it keep their discount."""
    if not await discounts_db.delete(ctx.db, discount_id):
        raise Refusal("discount_not_found")
