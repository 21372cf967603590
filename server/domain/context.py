"""What a worker's handlers share: built once at start, stored on the app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import asyncpg

from db.orders import NewOrder
from db.pool import Database
from server.domain.auth import Passwords, Tokens
from server.domain.catalog_cache import CatalogCache, FreshReadLimit
from server.domain.cursors import CursorCodec
from server.domain.order_actors import OrderSupervisor
from server.domain.order_batches import Batches
from server.domain.payments.provider import PaymentProvider
from server.domain.token_checks import TokenChecks
from server.runtime.config import Config
from server.runtime.liveness import Liveness
from server.runtime.metrics import Metrics
from server.runtime.standby import ReadTarget, Standby

# Products that missed the catalog cache, read together (server/domain/catalog.py):
# batched by the standby they may use (None: the primary only), (product id, this
# process's last write of it) -> (row, the moment before which every commit shows in it).
ProductReads: TypeAlias = Batches[Standby | None, tuple[int, float], tuple[asyncpg.Record, float]]


@dataclass
class Context:
    config: Config
    db: Database
    # Catalog reads on the primary: `db`, and for filtered lists (searches) a few
    # connections of their own, so that however many arrive they cannot take the
    # connections (or the database time) every other request needs.
    primary_reads: ReadTarget
    # The streaming standby anonymous catalog reads may use (DATABASE_READ_URL).
    standby: Standby | None
    passwords: Passwords
    tokens: Tokens
    cursors: CursorCodec
    metrics: Metrics
    supervisor: OrderSupervisor
    provider: PaymentProvider
    catalog: CatalogCache
    # This process's liveness lock: in-flight payments and refunds name its worker id.
    liveness: Liveness
    # Catalog reads that bypass the caches, per client address (CATALOG_FRESH_READS_PER_IP).
    fresh_reads: FreshReadLimit
    # Orders of one product arriving together, placed together (server/domain/orders.py).
    order_batches: Batches[int, NewOrder, asyncpg.Record]
    product_reads: ProductReads
    token_checks: TokenChecks

    def refresh_gauges(self) -> None:
        """Copy this worker's pool and actor state into the gauges."""
        pool, metrics = self.db.pool, self.metrics
        size, idle = pool.get_size(), self.db.idle
        metrics.pool_size.set(size)
        metrics.pool_idle.set(idle)
        metrics.pool_in_use.set(size - idle)
        metrics.pool_max.set(pool.get_max_size())
        metrics.pool_waiting.set(self.db.waiting)
        metrics.pool_waiting_new.set(self.db.new_work_waiting)
        metrics.actors_live.set(self.supervisor.live_count)
        metrics.mailbox_depth.set(self.supervisor.queued_count)
        metrics.catalog_cache_bytes.set(self.catalog.size_bytes)
        metrics.catalog_cache_serving.set(1 if self.catalog.serving else 0)
