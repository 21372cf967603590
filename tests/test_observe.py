"""loadtests/observe.py, which watches a bench run: what it reads from /proc and from a
real PostgreSQL, with work of known size done between its two snapshots."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import asyncpg
import pytest

from loadtests.observe import ObservationFailed, Observer, thread_times
from tests.helpers import eventually

ROWS = 100
SCANS = 10


async def _table_of_rows(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE scanned (id integer, note text)")
        await conn.execute(f"INSERT INTO scanned SELECT i, 'row' FROM generate_series(1, {ROWS}) AS i")
    finally:
        await conn.close()


def test_a_busy_thread_shows_more_time_on_a_cpu() -> None:
    before = thread_times(os.getpid())
    sum(i * i for i in range(300_000))
    after = thread_times(os.getpid())
    assert after.on_cpu_ns > before.on_cpu_ns


async def test_transactions_and_sequential_scans_are_counted_per_request(empty_database: str, pg_server: str) -> None:
    await _table_of_rows(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.fetchval("SELECT count(*) FROM scanned")  # before the run: not counted
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.fetchval("SELECT 1")
        observer = Observer(os.getpid(), empty_database, pg_server)
        observer.start()
        for _ in range(SCANS):
            assert await conn.fetchval("SELECT count(*) FROM scanned") == ROWS
        # Counters reach shared memory about once a second; this session's, now.
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    observer.stop()
    observed = observer.observation(requests=SCANS)
    assert observed.seq_tuples_per_request["scanned"] == ROWS
    assert observed.transactions_per_request >= 1


async def test_a_session_waiting_for_a_row_lock_is_seen_waiting_on_it(empty_database: str, pg_server: str) -> None:
    await _table_of_rows(empty_database)
    holder = await asyncpg.connect(empty_database)
    waiter = await asyncpg.connect(empty_database)
    watcher = await asyncpg.connect(pg_server)  # (outside the holder's transaction, which caches what it reads)
    observer = Observer(os.getpid(), empty_database, pg_server)
    observer.start()
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute("UPDATE scanned SET note = 'held' WHERE id = 1")
        blocked = asyncio.create_task(waiter.execute("UPDATE scanned SET note = 'waited' WHERE id = 1"))
        waiter_pid = waiter.get_server_pid()

        async def waiting() -> bool:
            event: str | None = await watcher.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", waiter_pid
            )
            return event == "Lock"

        await eventually(waiting)
        seen_from = observer.samples

        async def sampled_twice_since() -> bool:
            return observer.samples >= seen_from + 2

        await eventually(sampled_twice_since)
        await lock.rollback()
        await blocked
    finally:
        observer.stop()
        for conn in (holder, waiter, watcher):
            await conn.close()
    assert observer.observation(requests=1).sessions.get("Lock:transactionid", 0) > 0


async def test_a_watch_whose_database_goes_away_mid_run_says_so(empty_database: str, pg_server: str) -> None:
    observer = Observer(os.getpid(), empty_database, pg_server)
    observer.start()
    admin = await asyncpg.connect(pg_server)
    try:
        # The observer's own session on the run's database, ended as a failover would.
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            urlsplit(empty_database).path.lstrip("/"),
        )
    finally:
        await admin.close()
    assert ended == 1
    observer.stop()
    with pytest.raises(ObservationFailed, match="broke off"):
        observer.observation(requests=1)
