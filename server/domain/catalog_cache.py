"""The in-process cache of catalog representations, and the watch that keeps it fresh.

What is cached is what the API sends: the serialized body and its ETag, so a hit
costs neither a query nor JSON encoding. Entries are products (by id) and list
pages (by their query); the whole is bounded by CATALOG_CACHE_MAX_BYTES, least
recently used first out.

Freshness, across processes and replicas, comes from the database:
sql/014_caching.sql records every change of products, in the changing transaction,
in `catalog_changes`. Each process polls that table on a connection of its own
(`CatalogWatch`), every CATALOG_CHANGES_POLL_SECONDS, and drops what changed. The
watch runs on a thread of its own, with its own event loop: a poll takes a few
round trips, and on the serving loop each would wait a whole loop turn, which under a
thousand busy connections is a fifth of a second; the cache would then stop serving
exactly when it is needed most and send every read to the pool. On its thread a poll
waits only for the interpreter lock, which the serving thread gives up every few
milliseconds. So the cache is shared by two threads and takes a lock for what
either changes (an uncontended lock costs well under a microsecond a read). The
cache serves only while the last successful poll started less than
`STALE_BOUND_SECONDS` ago: when the watch is down, stalled or has not yet started,
every read goes to the database, and the first successful poll after a gap empties
the cache, unless the gap was a stall of the same watch shorter than the change
record keeps what it may have missed (a busy event loop late for a poll: then that
poll brings every change since the last, and the cache resumes with those dropped
instead of refilling from nothing while the loop is busiest). So no read is served
from a representation more than about a second older than the database.

The process that makes a change drops it at once: its pooled sessions receive the
trigger's NOTICE (db/catalog_changes.py), and the cache (a `SessionWatcher` of the
pool) drops the ids when the NOTICE arrives and again when the connection returns
to the pool, after the commit, so a read that raced with the change cannot leave the
old version behind.

A read that misses notes the cache's `epoch` before asking the database and stores
its answer only if nothing was invalidated meanwhile: a change that committed after
the read's snapshot may already have been dropped, and must not come back.

The cache also remembers, for CHANGE_MEMORY_SECONDS, when it learned of each
product's last change, in two records: `own_changes`, this process's own writes (at
the commit), and `known_changes`, those and other writers' changes the watch saw. A
read from a standby (server/runtime/standby.py) must show this process's own last
write of what it reads, or it is made on the primary; and it is stored only if it
shows every change known, or the cache would keep a version older than one it has
already dropped until the next change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import asyncpg
import uvloop

from db import catalog_changes
from server.runtime.metrics import Metrics

log = logging.getLogger(__name__)

# The cache serves only while the last successful poll started less than this ago.
STALE_BOUND_SECONDS = 0.8
_RETRY_SECONDS = 0.5
# Change rows are purged once every watcher has certainly seen them (see purge below).
_PURGE_SECONDS = 10.0
# A watch whose previous poll succeeded less than this ago (on the same connection)
# missed no change: the rows since are still recorded (purges spare that long).
_RESUME_SECONDS = _PURGE_SECONDS / 2
# Memory an entry costs beyond its body and ETag (the entry, its key, the dict slot).
_ENTRY_OVERHEAD = 200
# How long the time of a change is remembered. A standby read is only ever allowed
# within DATABASE_READ_MAX_LAG_SECONDS of now, which config caps at this: an older
# change is certainly on any standby that may be read.
CHANGE_MEMORY_SECONDS = 1.0


class FreshReadLimit:
    """Token buckets per client address for the catalog reads that bypass the caches
    (and the standby, and nginx's limit for anonymous searches): `per_second` tokens a
    second, as many at most, one per read; 0 turns the limit off.

    Kept in the worker, not in the database: fresh reads are the hot read path's
    expensive side, and a counter in PostgreSQL would add a write to each of them,
    the very load the limit is there to bound. So the limit holds per worker (a
    replica with WORKERS=2 lets an address have up to twice as many). A bucket left
    alone for a second is full again, which is what a missing one means: buckets are
    forgotten after a second, so memory follows the addresses of the last second."""

    __slots__ = ("_buckets", "_per_second", "_swept_at")

    def __init__(self, per_second: int) -> None:
        self._per_second = float(per_second)
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)
        self._swept_at = time.monotonic()

    def allow(self, address: str) -> bool:
        rate = self._per_second
        if rate == 0:
            return True
        now = time.monotonic()
        buckets = self._buckets
        if now - self._swept_at >= 1.0:
            self._buckets = buckets = {a: b for a, b in buckets.items() if now - b[1] < 1.0}
            self._swept_at = now
        tokens, then = buckets.get(address, (rate, now))
        tokens = min(rate, tokens + (now - then) * rate)
        if tokens < 1.0:
            buckets[address] = (tokens, now)
            return False
        buckets[address] = (tokens - 1.0, now)
        return True


@dataclass(frozen=True, slots=True)
class Representation:
    etag: str
    body: bytes


class ChangeTimes:
    """When changes of products became known, on the monotonic clock, remembered for
    CHANGE_MEMORY_SECONDS (an older one is on any standby that may be read)."""

    __slots__ = ("_all", "_any", "_by_product", "_forgotten_at")

    def __init__(self) -> None:
        self._by_product: dict[int, float] = {}
        self._any = -math.inf  # a change of any product (what list pages may show)
        self._all = -math.inf  # a change of every product, or of products unknown
        self._forgotten_at = 0.0

    def record(self, product_ids: Iterable[int] | None, now: float) -> None:
        """These products changed (None: every product)."""
        if product_ids is None:
            self._all = now
            self._by_product.clear()  # every entry is older than `_all`
            return
        by_product = self._by_product
        for product_id in product_ids:
            by_product[product_id] = now
        self._any = now
        if now - self._forgotten_at >= CHANGE_MEMORY_SECONDS:
            moment = now - CHANGE_MEMORY_SECONDS
            self._by_product = {pid: at for pid, at in by_product.items() if at >= moment}
            self._forgotten_at = now

    def of_product(self, product_id: int) -> float:
        """When the product last changed (-inf: not within CHANGE_MEMORY_SECONDS)."""
        return max(self._all, self._by_product.get(product_id, -math.inf))

    def of_any(self) -> float:
        """When any product last changed."""
        return max(self._all, self._any)


class CatalogCache:
    """Products by id (int keys) and list pages (tuple keys), least recently used
    first out. Used from the serving thread and the watch's thread: whatever changes
    entries, the epoch or the change records, and whatever reads entries, holds
    `_lock`. Single reads need none under the interpreter lock: `serving`, `epoch`,
    `stop_serving`, and a change record's `of_product`/`of_any` (a reader that races
    with a change still stores nothing, because the change moves the epoch, which
    `put` checks under the lock)."""

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self.epoch = 0
        self._entries: collections.OrderedDict[Hashable, Representation] = collections.OrderedDict()
        self._lists: set[Hashable] = set()
        self._bytes = 0
        self._serve_until = 0.0
        self._pending: dict[object, set[int] | None] = {}
        self.own_changes = ChangeTimes()
        self.known_changes = ChangeTimes()
        self._metrics = metrics
        self._lock = threading.Lock()
        self._hit = {kind: metrics.catalog_cache_hits.labels(kind).inc for kind in ("product", "list")}
        self._miss = {kind: metrics.catalog_cache_misses.labels(kind).inc for kind in ("product", "list")}

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def serving(self) -> bool:
        return time.monotonic() < self._serve_until

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable, kind: str) -> Representation | None:
        with self._lock:
            entry = self._entries.get(key) if time.monotonic() < self._serve_until else None
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is None:
            self._miss[kind]()
            return None
        self._hit[kind]()
        return entry

    def put(self, key: Hashable, entry: Representation, epoch: int, is_list: bool = False) -> None:
        """Store what a read found, unless anything was invalidated since it began
        (`epoch` is what `self.epoch` was then) or the cache is not serving."""
        size = len(entry.body) + len(entry.etag) + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        with self._lock:
            if epoch == self.epoch and self.serving:
                self._store(key, entry, size, is_list)

    def _store(self, key: Hashable, entry: Representation, size: int, is_list: bool) -> None:
        self._drop(key)
        self._entries[key] = entry
        self._bytes += size
        if is_list:
            self._lists.add(key)
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self._metrics.catalog_cache_evictions.inc()

    def invalidate(self, product_ids: Iterable[int] | None, own: bool = False) -> None:
        """Drop these products and every list page (None: drop everything). `own`:
        the change is this process's own write."""
        with self._lock:
            self.epoch += 1
            now = time.monotonic()
            if own:
                self.own_changes.record(product_ids, now)
            if product_ids is None:
                self._clear()
                return
            self.known_changes.record(product_ids, now)
            for product_id in product_ids:
                self._drop(product_id)
            for key in self._lists.copy():
                self._drop(key)

    def _clear(self) -> None:
        self.epoch += 1
        self._entries.clear()
        self._lists.clear()
        self._bytes = 0
        self.known_changes.record(None, time.monotonic())

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body) + len(entry.etag) + _ENTRY_OVERHEAD
            self._lists.discard(key)

    # --- freshness ---------------------------------------------------------------

    def confirm(self, poll_started: float, resumed: bool) -> None:
        """A poll that started at `poll_started` succeeded: every change committed
        before it has been applied. `resumed`: the same watch polled successfully
        less than _RESUME_SECONDS before, so none was missed since."""
        with self._lock:
            if not self.serving and not resumed:
                # After a gap (start, reconnection, long stall) changes may have been missed.
                self._clear()
            self._serve_until = poll_started + STALE_BOUND_SECONDS

    def stop_serving(self) -> None:
        self._serve_until = 0.0

    # --- the pool's SessionWatcher: this process's own changes --------------------

    def notice(self, conn: object, message: asyncpg.PostgresLogMessage) -> None:
        if not catalog_changes.is_change_notice(message.message):
            return
        ids = catalog_changes.notice_ids(message.message)
        self.invalidate(ids, own=True)
        if ids is None:
            self._pending[conn] = None
            return
        pending = self._pending.get(conn, set())
        if pending is not None:
            pending.update(ids)
            self._pending[conn] = pending

    def released(self, conn: object) -> None:
        if conn in self._pending:
            # After the commit: from now on the change is on the primary.
            self.invalidate(self._pending.pop(conn), own=True)


class CatalogWatch:
    """Polls the database's record of catalog changes on a connection of its own,
    reconnecting after any failure, on a thread and event loop of its own; see the
    module's docstring."""

    def __init__(self, cache: CatalogCache, dsn: str, interval: float, connect_timeout: float) -> None:
        self._cache = cache
        self._dsn = dsn
        self._interval = interval
        self._connect_timeout = connect_timeout
        self._loop = uvloop.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._up = True  # so that a failure to start is logged

    def start(self) -> None:
        # The task is made before the thread runs the loop, so `stop` always finds it.
        self._task = self._loop.create_task(self._run(), name="catalog-watch")
        thread = threading.Thread(target=self._serve, name="catalog-watch", daemon=True)
        thread.start()
        self._thread = thread  # only a started thread can be joined

    def _serve(self) -> None:
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)

    async def stop(self) -> None:
        """Cancel the watch, wait for its thread to end, close its loop."""
        if self._task is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            await asyncio.to_thread(self._thread.join)
        self._loop.close()

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await catalog_changes.connect(self._dsn, self._connect_timeout)
                conn.add_termination_listener(lambda _conn: self._cache.stop_serving())
                await self._watch(conn)
            except Exception as exc:
                # Logged once per outage (the retries go on quietly).
                if self._up:
                    log.warning("catalog watch lost; the catalog cache is off until it is back",
                                extra={"error": repr(exc)})  # fmt: skip
                self._up = False
                self._cache.stop_serving()
            finally:
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(_RETRY_SECONDS)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        # A late poll is waited for longer than the cache would serve without one: the
        # cache stops serving meanwhile all the same, and the watch can resume after.
        cache, timeout = self._cache, _RESUME_SECONDS
        horizon = await catalog_changes.horizon(conn, timeout)
        applied: set[int] = set()  # transactions at or above the horizon already applied
        samples: collections.deque[tuple[float, int]] = collections.deque([(time.monotonic(), horizon)])
        purged_at = time.monotonic()
        previous: float | None = None  # when this watch's last successful poll started
        while True:
            started = time.monotonic()
            horizon, changes = await catalog_changes.poll(conn, horizon, timeout)
            for change in changes:
                if change.xid not in applied:
                    applied.add(change.xid)
                    cache.invalidate(change.product_ids)
            applied = {xid for xid in applied if xid >= horizon}
            cache.confirm(started, resumed=previous is not None and started - previous < _RESUME_SECONDS)
            previous = started
            self._up = True
            samples.append((started, horizon))
            if started - purged_at >= _PURGE_SECONDS / 2 and started - samples[0][0] >= _PURGE_SECONDS:
                # Transactions below a horizon sampled that long ago ended before
                # then; every watcher still serving has polled many times since.
                _, old = samples.popleft()
                while started - samples[0][0] >= _PURGE_SECONDS:
                    _, old = samples.popleft()
                await catalog_changes.purge(conn, old, timeout)
                purged_at = started
            # Polls start every interval, however long the last one took: a busy event
            # loop, late with a poll's answer, must not also delay the next one, or the
            # cache lapses (and every read goes to the database) just when it is busiest.
            await asyncio.sleep(max(0.0, started + self._interval - time.monotonic()))
