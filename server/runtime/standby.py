"""A streaming standby that catalog reads may use (DATABASE_READ_URL), and the
monitor that says how fresh it is.

Freshness is measured, not assumed. Every CHECK_SECONDS the monitor notes the time
and then the primary's WAL insert position (db/replication.py), and asks the
standby how far it has replayed. Once the standby has replayed past a position
sampled at time t, it shows every transaction that committed on the primary
before t: `covered_at` is the latest such t. A read may go to the standby when
`covered_at` is recent enough for it (`Standby.covers`, asked by the catalog with
its own bound: this process's own last write of what it reads).
Times are this process's monotonic clock, so no clock needs to agree with another
machine's; the primary is asked by the same process that measures.

When the monitor cannot reach either server, or the standby is not in recovery
(promoted, or not a standby at all), `covered_at` stops moving, the lag it reports
grows past any bound and reads go to the primary; a read that fails on the standby
marks it lost at once (`lost`). The monitor reconnects on its own, and reads come
back to the standby with its first good sample.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import asyncpg

from db import replication
from db.pool import Database
from server.runtime.metrics import Metrics

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.1
_RETRY_SECONDS = 0.5
# A standby read failing again and again (its pool full, recovery conflicts) is logged
# at most this often.
_LOST_LOG_SECONDS = 30.0
# WAL pages (XLOG_BLCKSZ) and the sizes of their headers (short; long, at a segment's
# start). An insert position just past a page header means nothing was written after
# the header: a standby that has replayed up to the page's start has all of it.
_WAL_PAGE = 8192
_PAGE_HEADERS = (24, 40)
# Samples the standby has not reached yet; beyond this the oldest go (the standby is
# far behind anyway, and a later sample will do once it catches up).
_MAX_SAMPLES = 1000


@dataclass(frozen=True, slots=True)
class ReadTarget:
    """Where catalog reads run: a server's pool for plain reads and its small pool
    for searches (so that searches cannot take every connection)."""

    db: Database
    search_db: Database


class Coverage:
    """Which moment of the primary's history a standby has caught up with, from
    samples (time, primary WAL position) and the standby's replayed position."""

    def __init__(self) -> None:
        self.covered_at = -math.inf
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=_MAX_SAMPLES)

    def primary_at(self, at: float, position: int) -> None:
        """The primary's insert position, read after time `at`."""
        self._samples.append((at, position))

    def standby_replayed(self, position: int) -> None:
        samples = self._samples
        while samples and _reached(samples[0][1], position):
            at, _ = samples.popleft()
            self.covered_at = max(self.covered_at, at)

    def covers(self, changed_at: float, max_lag: float, now: float) -> bool:
        """Whether the standby shows everything committed before `changed_at`, and
        lags by no more than `max_lag` at `now`. (Strictly after: a sample and a
        change read at the same clock value are not known to be in that order.)"""
        return self.covered_at > changed_at and now - self.covered_at <= max_lag

    def lost(self) -> None:
        """The standby cannot be trusted to show anything (down, or not a standby)."""
        self.covered_at = -math.inf
        self._samples.clear()


def _reached(inserted: int, replayed: int) -> bool:
    """Whether a standby that has replayed up to `replayed` has everything the
    primary had inserted up to `inserted`."""
    if replayed >= inserted:
        return True
    offset = inserted % _WAL_PAGE
    return offset in _PAGE_HEADERS and replayed >= inserted - offset


class Standby:
    """The standby's pools (one for plain reads, one small one for searches, like
    the primary's) and its monitor."""

    def __init__(self, db: Database, search_db: Database, coverage: Coverage, metrics: Metrics, max_lag: float) -> None:
        self.reads = ReadTarget(db, search_db)
        self.max_lag = max_lag
        self._coverage = coverage
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._up = True  # so that a failure to start is logged
        self._lost_logged_at = -math.inf

    @property
    def covered_at(self) -> float:
        """The moment before which every commit on the primary shows on the standby."""
        return self._coverage.covered_at

    @property
    def lag(self) -> float:
        """How far behind the primary the standby is known to be (inf: unknown)."""
        return time.monotonic() - self._coverage.covered_at

    def covers(self, changed_at: float) -> bool:
        """Whether a read may go to the standby: it lags by no more than the bound,
        and it shows everything committed before `changed_at`."""
        return self._coverage.covers(changed_at, self.max_lag, time.monotonic())

    def lost(self, exc: BaseException) -> None:
        """A read failed on the standby: send reads to the primary until the monitor
        sees it again."""
        now = time.monotonic()
        if now - self._lost_logged_at >= _LOST_LOG_SECONDS:
            log.warning("standby read failed; catalog reads go to the primary", extra={"error": repr(exc)})
            self._lost_logged_at = now
        self._coverage.lost()

    def start(self, primary_dsn: str, standby_dsn: str, connect_timeout: float) -> None:
        self._task = asyncio.create_task(self._run(primary_dsn, standby_dsn, connect_timeout), name="standby-monitor")

    async def close(self, timeout: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.reads.search_db.close(timeout)
        await self.reads.db.close(timeout)

    async def _run(self, primary_dsn: str, standby_dsn: str, connect_timeout: float) -> None:
        while True:
            primary: asyncpg.Connection | None = None
            standby: asyncpg.Connection | None = None
            try:
                primary = await replication.connect(primary_dsn, connect_timeout)
                standby = await replication.connect(standby_dsn, connect_timeout)
                await self._watch(primary, standby, connect_timeout)
            except Exception as exc:
                # Logged once per outage (the retries go on quietly).
                if self._up:
                    log.warning("standby monitor lost; catalog reads go to the primary", extra={"error": repr(exc)})
                self._up = False
                self._coverage.lost()
                self._metrics.standby_lag.set(math.inf)
            finally:
                for conn in (primary, standby):
                    if conn is not None:
                        conn.terminate()
            await asyncio.sleep(_RETRY_SECONDS)

    async def _watch(self, primary: asyncpg.Connection, standby: asyncpg.Connection, timeout: float) -> None:
        # `timeout` only bounds a connection that hangs: a slow answer is already a
        # sample that covers less, and a short timeout would drop the standby exactly
        # when a busy primary needs it most.
        coverage = self._coverage
        while True:
            at = time.monotonic()
            coverage.primary_at(at, await replication.inserted(primary, timeout))
            position = await replication.replayed(standby, timeout)
            if position is None:
                raise NotAStandby("DATABASE_READ_URL is not in recovery (promoted, or not a standby)")
            coverage.standby_replayed(position)
            self._metrics.standby_lag.set(self.lag)
            if not self._up:
                log.info("standby monitor back", extra={"lag_seconds": round(self.lag, 3)})
                self._up = True
            await asyncio.sleep(CHECK_SECONDS)


class NotAStandby(Exception):
    pass
