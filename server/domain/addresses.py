"""The address book: each customer's own addresses (another's is not found), at most
MAX_PER_USER of them, oldest first."""

from __future__ import annotations

from typing import Any

import asyncpg

from db import addresses as addresses_db
from db.refusals import Refusal
from server.domain.auth import Principal
from server.domain.context import Context
from server.domain.pages import keyset_page

# The contract's most addresses one user may keep (one more: 409).
MAX_PER_USER = 20
# An address's fields, as the book and an order's snapshot hold them.
PostalAddress = addresses_db.PostalAddress


async def create(ctx: Context, principal: Principal, address: PostalAddress) -> asyncpg.Record:
    return await addresses_db.create(ctx.db, principal.id, address, MAX_PER_USER)


async def get(ctx: Context, principal: Principal, address_id: int) -> asyncpg.Record:
    row = await addresses_db.get(ctx.db, principal.id, address_id)
    if row is None:
        raise Refusal("address_not_found")
    return row


async def page(
    ctx: Context, principal: Principal, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    """The caller's addresses, oldest first."""

    async def fetch(after: list[int] | None, limit: int) -> list[asyncpg.Record]:
        return await addresses_db.page(ctx.db, principal.id, None if after is None else after[0], limit)

    return await keyset_page(ctx, f"addresses:{principal.id}", cursor, limit, fetch)


async def update(ctx: Context, principal: Principal, address_id: int, changes: dict[str, Any]) -> asyncpg.Record:
    row = await addresses_db.update(ctx.db, principal.id, address_id, changes)
    if row is None:
        raise Refusal("address_not_found")
    return row


async def delete(ctx: Context, principal: Principal, address_id: int) -> None:
    if not await addresses_db.delete(ctx.db, principal.id, address_id):
        raise Refusal("address_not_found")
