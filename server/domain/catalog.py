"""The catalog as the API sends it: product and list representations with their
ETags, answered from the in-process cache when it may (server/domain/catalog_cache.py).

An ETag is a digest of the body it stands for (BLAKE2b, 128 bits): it changes
exactly when the representation does, is the same on every process, replica and
standby, and tells nothing about the database (the transaction ids of row versions
that ETags showed before are a counter of the server's write traffic). Strong, since
it names the bytes.

Anonymous reads that miss the cache go to the standby when DATABASE_READ_URL names
one and it is fresh enough for them (`_read`); what they find is cached only when the
standby showed every change this process knows of.

Products that miss the cache are read together (`product_reads`): while one read
runs, those that arrive meanwhile are read next in one statement, each with the
answer it would have had alone. Under a thousand connections a cold cache, or a hot
product that every order invalidates, would otherwise send a read per request to the
pool, where each waits its turn for a connection behind the others.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg

from db import products as products_db
from db.pool import is_outage
from db.refusals import Refusal
from server.domain import products
from server.domain.catalog_cache import Representation
from server.domain.context import Context, ProductReads
from server.domain.order_batches import Batches
from server.domain.shapes import ProductOut, render
from server.runtime.config import Config
from server.runtime.jsonio import dumps
from server.runtime.metrics import Metrics
from server.runtime.standby import ReadTarget, Standby

T = TypeVar("T")


def _etag(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


def fresh_read_allowed(ctx: Context, client: str) -> bool:
    """Whether a read that asks to bypass the caches (a reload, or a valid token) from
    this client address gets its fresh read: at most CATALOG_FRESH_READS_PER_IP a
    second per address (in each worker); beyond that it is served like an anonymous
    read, never refused."""
    return ctx.fresh_reads.allow(client)


async def product(ctx: Context, product_id: int, fresh: bool) -> Representation:
    """The product's representation; `fresh`: from the database, never the cache."""
    cache = ctx.catalog
    if not fresh:
        hit = cache.get(product_id, "product")
        if hit is not None:
            return hit
    epoch = cache.epoch
    own_change = cache.own_changes.of_product(product_id)
    standby = None if fresh else ctx.standby
    row, covered = await ctx.product_reads.place(standby, (product_id, own_change))
    body = dumps(render(ProductOut, row))
    entry = Representation(_etag(body), body)
    if covered > cache.known_changes.of_product(product_id):
        cache.put(product_id, entry, epoch)
    return entry


async def page(
    ctx: Context,
    sort: str,
    filters: products_db.ListFilters,
    cursor: str | None,
    limit: int,
    fresh: bool,
) -> Representation:
    """A page of the catalog as `GET /api/products` sends it."""
    cache = ctx.catalog
    key = (sort, filters, cursor, limit)
    if not fresh:
        hit = cache.get(key, "list")
        if hit is not None:
            return hit
    epoch = cache.epoch
    (rows, next_cursor), covered = await _read(
        ctx.primary_reads,
        None if fresh else ctx.standby,
        ctx.metrics,
        cache.own_changes.of_any(),
        lambda reads: products.page(ctx, reads, sort, filters, cursor, limit),
    )
    body = dumps({"items": [render(ProductOut, row) for row in rows], "next_cursor": next_cursor})
    entry = Representation(_etag(body), body)
    if covered > cache.known_changes.of_any():
        cache.put(key, entry, epoch, is_list=True)
    return entry


def product_reads(primary: ReadTarget, metrics: Metrics, config: Config) -> ProductReads:
    """This worker's reads of products that missed the cache, batched by the standby
    they may use (None: the primary only): a read of (product id, this process's
    last write of it) answers what `_read` does, or refuses
    product_not_found. A read still waiting for its batch after
    DB_POOL_ACQUIRE_TIMEOUT is answered 503 when the next batch forms. The queue
    sheds nothing by itself: a batch held up by a stalled standby (until it fails
    over to the primary) must not turn the reads behind it into 503s, and the
    primary's connection line sheds when it is the one overloaded. Built once, by
    the composition root."""

    async def read_one(standby: Standby | None, wanted: tuple[int, float]) -> tuple[asyncpg.Record, float]:
        product_id, own_change = wanted
        return await _read(primary, standby, metrics, own_change, lambda reads: products.get(reads, product_id))

    async def read_many(
        standby: Standby | None, wanted: Sequence[tuple[int, float]]
    ) -> list[tuple[asyncpg.Record, float] | Refusal]:
        # The standby must show the latest of these products' own writes to serve any.
        own_change = max(own for _, own in wanted)
        ids = sorted({product_id for product_id, _ in wanted})
        found, covered = await _read(primary, standby, metrics, own_change, lambda reads: products.get_many(reads, ids))
        return [(found[pid], covered) if pid in found else Refusal("product_not_found") for pid, _ in wanted]

    return Batches(
        read_one,
        read_many,
        max_batch=_READ_BATCH_MAX,
        timeout=config.db_pool_acquire_timeout,
        observe=metrics.catalog_read_batch_size.observe,
    )


# Products read together at most: a statement of a few milliseconds however cold the cache.
_READ_BATCH_MAX = 512


async def _read(
    primary: ReadTarget,
    standby: Standby | None,
    metrics: Metrics,
    own_change: float,
    read: Callable[[ReadTarget], Awaitable[T]],
) -> tuple[T, float]:
    """`read` on `standby` when there is one within its lag bound that shows
    `own_change` (this process's last write of what is read), else on the primary;
    with the moment before which every commit shows in what was read (+inf: the
    primary), for the caller to decide whether the cache may keep it. A fresh read (a
    reload, or an authenticated one) is given no standby: it always goes to the
    primary. A standby that fails is given up until its monitor sees it again, and the
    read is made on the primary."""
    if standby is not None and standby.covers(own_change):
        covered = standby.covered_at  # before the read: what its snapshot shows at least
        try:
            result = await read(standby.reads)
        except Exception as exc:
            if not is_outage(exc):
                raise
            standby.lost(exc)
        else:
            metrics.count_catalog_read["standby"]()
            return result, covered
    result = await read(primary)
    metrics.count_catalog_read["primary"]()
    return result, math.inf
