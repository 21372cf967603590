"""Shipping methods: the admin's to make and change; anyone sees the enabled ones
(admins: all), which an order may ship with (sql/functions/checkout.sql prices them).

Anonymous reads are answered with an ETag (a digest of the body) and the catalog's
Cache-Control: the body is read from the database each time (the table is small), so
the ETag is never stale and a change shows at once; clients and shared caches may
keep it CATALOG_MAX_AGE_SECONDS, as they keep the catalog.
"""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg

from db import shipping_methods as methods_db
from db.refusals import Refusal
from server.domain.auth import Principal
from server.domain.catalog_cache import Representation
from server.domain.context import Context
from server.domain.pages import keyset_page
from server.domain.shapes import ShippingMethodOut, render
from server.runtime.jsonio import dumps


def _sees_disabled(principal: Principal | None) -> bool:
    return principal is not None and principal.is_admin


def _representation(body: bytes) -> Representation:
    return Representation(f'"s.{hashlib.blake2b(body, digest_size=16).hexdigest()}"', body)


async def create(ctx: Context, fields: dict[str, Any]) -> asyncpg.Record:
    return await methods_db.create(ctx.db, **fields)


async def get(ctx: Context, principal: Principal | None, method_id: int) -> Representation:
    """One method as the API sends it: an enabled one to anyone, a disabled one to admins."""
    row = await methods_db.get(ctx.db, method_id, disabled_too=_sees_disabled(principal))
    if row is None:
        raise Refusal("shipping_method_not_found")
    return _representation(dumps(render(ShippingMethodOut, row)))


async def page(ctx: Context, principal: Principal | None, cursor: str | None, limit: int) -> Representation:
    """A page of the methods (enabled ones; admins: all), oldest first."""
    disabled_too = _sees_disabled(principal)

    async def fetch(after: list[int] | None, limit: int) -> list[asyncpg.Record]:
        return await methods_db.page(
            ctx.db, disabled_too=disabled_too, after_id=None if after is None else after[0], limit=limit
        )

    rows, next_cursor = await keyset_page(ctx, f"shipping-methods:{disabled_too}", cursor, limit, fetch)
    return _representation(dumps({"items": [render(ShippingMethodOut, r) for r in rows], "next_cursor": next_cursor}))


async def update(ctx: Context, method_id: int, changes: dict[str, Any]) -> asyncpg.Record:
    row = await methods_db.update(ctx.db, method_id, changes)
    if row is None:
        raise Refusal("shipping_method_not_found")
    return row


async def delete(ctx: Context, method_id: int) -> None:
    if not await methods_db.delete(ctx.db, method_id):
        raise Refusal("shipping_method_not_found")
