"""The connection line: first come, first served, with a deadline; 503 when the
pool stays exhausted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from db.pool import Database, Overloaded, _Line, is_outage, mark_work_started, new_request
from db.refusals import Refusal
from handlers.routing import CONTEXT
from server.domain.auth import Tokens
from tests.helpers import Api, eventually, new_work_in_line, scrape


@pytest.fixture
async def tiny_db(clean_db: str) -> Any:
    db = Database(await asyncpg.create_pool(clean_db, min_size=2, max_size=2), acquire_timeout=0.3)
    try:
        yield db
    finally:
        await db.close(5)


async def test_waiting_requests_get_connections_in_arrival_order(tiny_db: Database) -> None:
    served: list[int] = []
    holders = [tiny_db.connection() for _ in range(2)]
    for holder in holders:
        await holder.__aenter__()

    async def wait_turn(index: int) -> None:
        async with tiny_db.connection():
            served.append(index)
            await asyncio.sleep(0.001)

    waiting = []
    for i in range(10):
        waiting.append(asyncio.create_task(wait_turn(i)))
        await asyncio.sleep(0)  # arrive one after the other
    for holder in holders:
        await holder.__aexit__(None, None, None)
    await asyncio.gather(*waiting)
    assert served == list(range(10))


async def test_work_already_started_is_served_before_new_work(tiny_db: Database) -> None:
    holders = [tiny_db.connection() for _ in range(2)]
    for holder in holders:
        await holder.__aenter__()
    served: list[str] = []

    async def request(name: str, statements: int) -> None:
        new_request()  # each task is a request of its own
        for _ in range(statements):
            async with tiny_db.connection():
                served.append(name)
                await asyncio.sleep(0.001)

    # "early" arrives first; its second statement queues behind new0's (which took
    # the slot early released) but ahead of the newcomers still waiting for a first.
    early = asyncio.create_task(request("early", 2))
    await asyncio.sleep(0)
    newcomers = [asyncio.create_task(request(f"new{i}", 1)) for i in range(4)]
    await asyncio.sleep(0)
    await holders[0].__aexit__(None, None, None)
    await asyncio.gather(early, *newcomers)
    await holders[1].__aexit__(None, None, None)
    assert served == ["early", "new0", "early", "new1", "new2", "new3"]


async def test_a_request_that_waits_past_the_deadline_gets_timeout(tiny_db: Database) -> None:
    holders = [tiny_db.connection() for _ in range(2)]
    for holder in holders:
        await holder.__aenter__()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with tiny_db.connection():
            pass
    # Not before the deadline (0.3 s); and it does end (the bound only catches a hang:
    # a busy machine may answer late).
    assert 0.25 <= time.monotonic() - started < 10.0
    for holder in holders:
        await holder.__aexit__(None, None, None)
    assert await tiny_db.fetchval("SELECT 1") == 1  # the slots came back


async def test_a_waiter_cancelled_after_its_deadline_passed_gives_back_no_slot() -> None:
    line = _Line(1, timeout=0.0, shed_after=0.0)  # every wait is past its deadline at once
    await line.enter()  # the only slot, held
    waiting = asyncio.create_task(line.enter())
    await asyncio.sleep(0)  # in line
    line._reap()  # the reaper's turn: the waiter gets TimeoutError...
    waiting.cancel()  # ...and its task is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiting
    line.leave()  # the holder leaves: one slot is free, not two
    assert await line.enter() == 0.0
    second = asyncio.create_task(line.enter())
    await asyncio.sleep(0)
    assert not second.done()  # waits: no slot was made up
    second.cancel()


async def _in_line(db: Database, count: int) -> bool:
    return db.waiting == count


async def test_new_work_is_shed_at_once_while_the_oldest_in_line_has_waited_shed_after(clean_db: str) -> None:
    db = Database(await asyncpg.create_pool(clean_db, min_size=1, max_size=1), acquire_timeout=30.0, shed_after=0.05)
    try:
        holder = db.connection()
        await holder.__aenter__()
        new_request()  # what follows is new work again
        first = asyncio.create_task(db.fetchval("SELECT 1"))
        await eventually(lambda: _in_line(db, 1))
        await asyncio.sleep(0.1)  # the first in line has now waited longer than shed_after
        with pytest.raises(Overloaded):
            await db.fetchval("SELECT 2")

        async def started_work() -> Any:
            mark_work_started()  # a request's second statement, an actor's command
            return await db.fetchval("SELECT 3")

        second = asyncio.create_task(started_work())  # never shed: it queues
        await eventually(lambda: _in_line(db, 2))
        await holder.__aexit__(None, None, None)
        assert list(await asyncio.gather(first, second)) == [1, 3]
        assert await db.fetchval("SELECT 4") == 4  # the line is empty: nothing is shed
    finally:
        await db.close(5)


async def test_nothing_is_shed_while_the_line_is_younger_than_shed_after(clean_db: str) -> None:
    db = Database(await asyncpg.create_pool(clean_db, min_size=1, max_size=1), acquire_timeout=30.0, shed_after=60.0)
    try:
        holder = db.connection()
        await holder.__aenter__()
        new_request()  # what follows is new work again
        waiting = [asyncio.create_task(db.fetchval("SELECT $1::int", i)) for i in range(5)]
        await eventually(lambda: _in_line(db, 5))
        await holder.__aexit__(None, None, None)
        assert await asyncio.gather(*waiting) == list(range(5))
    finally:
        await db.close(5)


async def _upkeep_in_line_beyond(db: Database, count: int) -> bool:
    return db.waiting - db.new_work_waiting > count


# The worker's periodic jobs queue for the one connection too (in the lane of work
# already started), so the test counts its requests by lane; and with a deadline far
# beyond the test's, nobody leaves the line while the connection is held.
@pytest.mark.parametrize(
    "config_overrides",
    [{"db_pool_max_size": 1, "db_pool_min_size": 1, "db_pool_shed_after": 0.05, "db_pool_acquire_timeout": 120.0}],
)
async def test_an_overloaded_worker_answers_new_requests_503_busy_at_once(api: Api, app: web.Application) -> None:
    user = await api.customer()
    db = app[CONTEXT].db
    holder = db.connection()
    await holder.__aenter__()
    try:
        first = asyncio.create_task(api.call("GET", "/api/users/profile", token=user.token))
        await eventually(lambda: new_work_in_line(db, 1))
        await asyncio.sleep(0.1)  # the first in line has now waited longer than shed_after
        reply = await api.call("GET", "/api/users/profile", token=user.token)
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
        assert reply.json["detail"] == "the service is busy; retry shortly"
        # The readiness probe is never shed: busy is not down (it waits its turn).
        upkeep = db.waiting - db.new_work_waiting
        ready = asyncio.create_task(api.call("GET", "/readyz"))
        await eventually(lambda: _upkeep_in_line_beyond(db, upkeep))
    finally:
        await holder.__aexit__(None, None, None)
    assert (await first).status == 200
    assert (await ready).status == 200


@pytest.mark.parametrize(
    "config_overrides",
    [{"db_pool_max_size": 1, "db_pool_min_size": 1, "db_pool_shed_after": 60.0, "db_pool_acquire_timeout": 120.0}],
)
async def test_the_pool_gauges_show_the_new_requests_waiting_apart_from_the_whole_line(
    api: Api, app: web.Application
) -> None:
    user = await api.customer()
    ctx = app[CONTEXT]
    holder = ctx.db.connection()
    await holder.__aenter__()
    try:
        waiting = [asyncio.create_task(api.call("GET", "/api/users/profile", token=user.token)) for _ in range(2)]
        await eventually(lambda: new_work_in_line(ctx.db, 2))
        metrics = await scrape(api)
    finally:
        await holder.__aexit__(None, None, None)
    assert metrics.value("db_pool_waiting_new_requests") == 2
    assert metrics.value("db_pool_waiting_requests") >= 2  # the worker's own jobs may wait too
    assert [reply.status for reply in await asyncio.gather(*waiting)] == [200, 200]


@pytest.mark.parametrize("moment", ["while it waits", "just as a slot is handed to it"])
async def test_a_cancelled_waiter_does_not_lose_a_slot(tiny_db: Database, moment: str) -> None:
    holders = [tiny_db.connection() for _ in range(2)]
    for holder in holders:
        await holder.__aenter__()
    waiter = asyncio.create_task(tiny_db.fetchval("SELECT 1"))
    await asyncio.sleep(0.01)
    if moment == "while it waits":
        waiter.cancel()
        for holder in holders:
            await holder.__aexit__(None, None, None)
    else:
        # Releasing passes the slot straight to the waiter, which has not run yet.
        await holders[0].__aexit__(None, None, None)
        waiter.cancel()
        await holders[1].__aexit__(None, None, None)
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert waiter.cancelled()
    # Both slots are free again: the two connections can be held at once (with a
    # slot lost, the second would wait past the 0.3 s deadline: TimeoutError).
    async with tiny_db.connection(), tiny_db.connection():
        pass


@pytest.fixture
async def one_connection_db(clean_db: str) -> Any:
    db = Database(await asyncpg.create_pool(clean_db, min_size=1, max_size=1), acquire_timeout=1.0)
    try:
        yield db
    finally:
        await db.close(5)


async def test_a_cancelled_statement_gives_its_connection_back_to_the_pool(one_connection_db: Database) -> None:
    backend = await one_connection_db.fetchval("SELECT pg_backend_pid()")

    async def run_past_the_statement_timeout() -> None:
        async with one_connection_db.connection() as conn:
            await conn.execute("SET statement_timeout = 50")
            await conn.execute("SELECT pg_sleep(2)")

    with pytest.raises(asyncpg.QueryCanceledError):
        await run_past_the_statement_timeout()
    assert await one_connection_db.fetchval("SELECT pg_backend_pid()") == backend


async def test_a_connection_that_may_be_broken_is_replaced(one_connection_db: Database) -> None:
    backend = await one_connection_db.fetchval("SELECT pg_backend_pid()")
    with pytest.raises(ConnectionResetError):
        async with one_connection_db.connection():
            raise ConnectionResetError("lost mid-request")
    assert await one_connection_db.fetchval("SELECT pg_backend_pid()") != backend


@pytest.mark.parametrize(
    "config_overrides", [{"db_pool_max_size": 1, "db_pool_min_size": 1, "db_pool_acquire_timeout": 0.2}]
)
async def test_an_exhausted_pool_answers_503_with_retry_after(api: Api, app: web.Application) -> None:
    await api.product()
    db = app[CONTEXT].db
    holder = db.connection()
    await holder.__aenter__()
    try:
        reply = await api.call("GET", "/api/products")
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
    finally:
        await holder.__aexit__(None, None, None)
    assert (await api.call("GET", "/api/products")).status == 200


def test_a_remembered_token_is_refused_once_it_expires() -> None:
    tokens = Tokens("s" * 40, ttl_seconds=1, leeway_seconds=0)
    token = tokens.issue(7, 0, 1)
    assert tokens.decode(token).user_id == 7
    assert tokens.decode(token).user_id == 7  # from memory
    time.sleep(2.05)
    with pytest.raises(Refusal, match="token_expired"):
        tokens.decode(token)


async def test_tables_that_outgrow_their_statistics_are_analyzed(db: asyncpg.Connection, tiny_db: Database) -> None:
    from db.maintenance import analyze_grown_tables

    await db.execute("ANALYZE orders")  # planned as empty from now on; a few hundred rows outgrow that
    user_id = await db.fetchval(
        "INSERT INTO users (email, name, password_hash) VALUES ('s@x.io', 'S', 'x') RETURNING id"
    )
    await db.execute(
        "INSERT INTO orders (user_id, total, currency, expires_at) "
        "SELECT $1, 1, 'USD', now() + interval '1 hour' FROM generate_series(1, 300)",
        user_id,
    )
    for _ in range(30):  # the cumulative statistics are flushed within a second or so
        if await db.fetchval("SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'orders'") >= 300:
            break
        await asyncio.sleep(0.1)
    assert "orders" in await analyze_grown_tables(tiny_db)
    assert await db.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'orders'") >= 300
    assert "orders" not in await analyze_grown_tables(tiny_db)


_LOST = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError, ConnectionError)


async def _cut_mid_statement(db: Database, admin: asyncpg.Connection, in_transaction: bool) -> None:
    """A statement on a pooled connection whose backend is terminated under it."""
    acquire = db.transaction() if in_transaction else db.connection()
    async with acquire as conn:
        await conn.execute("SELECT 1")
        await admin.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        await conn.execute("SELECT pg_sleep(0)")


@pytest.mark.parametrize("in_transaction", [False, True], ids=["statement", "transaction"])
async def test_connections_lost_mid_statement_give_their_place_in_line_back(
    clean_db: str, in_transaction: bool
) -> None:
    """A failover (or any restart of the database) cuts connections in the middle of a
    statement. asyncpg returns such a connection to its pool by itself; the line must
    still get its place back, or after as many losses as the pool has connections every
    request waits for one that never comes (seen in the failover drills: all 503)."""
    pool = await asyncpg.create_pool(clean_db, min_size=1, max_size=2)
    db = Database(pool, acquire_timeout=1.0)
    admin = await asyncpg.connect(clean_db)
    try:
        for _ in range(5):  # more losses than the pool has connections
            with pytest.raises(_LOST):
                await _cut_mid_statement(db, admin, in_transaction)
        assert await db.fetchval("SELECT 42") == 42  # a place in line, and a fresh connection
    finally:
        await admin.close()
        await db.close(5)


async def test_a_write_on_a_member_that_became_a_standby_is_an_outage(clean_db: str) -> None:
    """During a failover a connection can still reach the old leader after it restarted
    as a read-only standby: its writes fail with SQLSTATE 25006, which is the database
    being unavailable (503 with Retry-After), not a bug (500)."""
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("SET default_transaction_read_only = on")  # as on a standby
        with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError) as raised:
            await conn.execute("CREATE TEMP TABLE t (x int)")
    finally:
        await conn.close()
    assert is_outage(raised.value)


async def _backend(db: Database) -> int:
    pid: int = await db.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_a_connection_is_kept_for_the_next_statement_and_counted_idle(tiny_db: Database) -> None:
    first = await _backend(tiny_db)
    assert tiny_db.pool.get_idle_size() < tiny_db.pool.get_size()  # asyncpg lent it out still...
    assert tiny_db.idle == tiny_db.pool.get_size()  # ...but nothing is using it
    assert await _backend(tiny_db) == first


async def test_a_kept_connection_used_past_its_block_refuses(tiny_db: Database) -> None:
    async with tiny_db.connection() as conn:
        await conn.fetchval("SELECT 1")
    with pytest.raises(asyncpg.InterfaceError):
        await conn.fetchval("SELECT 2")  # as after asyncpg's own release: never the next caller's session


async def test_a_prepared_statement_used_past_its_block_refuses(tiny_db: Database) -> None:
    async with tiny_db.connection() as conn:
        statement = await conn.prepare("SELECT 1")
    with pytest.raises(asyncpg.InterfaceError):
        await statement.fetchval()


async def test_a_kept_connection_unused_for_a_while_goes_back_to_the_pool(tiny_db: Database) -> None:
    await _backend(tiny_db)

    async def all_back() -> bool:
        return tiny_db.pool.get_idle_size() == tiny_db.pool.get_size()

    await eventually(all_back)  # from then DB_POOL_MAX_INACTIVE_LIFETIME counts
    assert tiny_db.idle == tiny_db.pool.get_size()


async def test_a_kept_connection_still_goes_back_to_the_pool_often_enough_to_be_replaced(clean_db: str) -> None:
    # asyncpg closes a connection past max_queries when it is given back to it.
    db = Database(await asyncpg.create_pool(clean_db, min_size=1, max_size=1, max_queries=5), acquire_timeout=5.0)
    try:
        backends = {await _backend(db) for _ in range(200)}
    finally:
        await db.close(5)
    assert len(backends) > 1


async def _lose_a_kept_connection(db: Database, dsn: str) -> int:
    """Keep a connection, end its backend from another session, and wait until asyncpg
    has noticed. Returns the ended backend's pid."""
    async with db.connection() as kept:
        backend: int = await kept.fetchval("SELECT pg_backend_pid()")
        connection = kept._con  # type: ignore[attr-defined]  # asyncpg's connection behind this use's proxy
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", backend)
    finally:
        await admin.close()

    async def noticed() -> bool:
        return bool(connection.is_closed())

    await eventually(noticed)
    return backend


async def test_a_connection_lost_while_kept_is_not_handed_out(clean_db: str, one_connection_db: Database) -> None:
    backend = await _lose_a_kept_connection(one_connection_db, clean_db)
    assert await _backend(one_connection_db) != backend


async def test_the_idle_count_leaves_out_a_connection_lost_while_kept(clean_db: str, tiny_db: Database) -> None:
    await _lose_a_kept_connection(tiny_db, clean_db)
    assert tiny_db.idle <= tiny_db.pool.get_size()


async def _committed_users(dsn: str) -> list[str]:
    """The users another session sees: what was really committed."""
    conn = await asyncpg.connect(dsn)
    try:
        return [row["email"] for row in await conn.fetch("SELECT email FROM users ORDER BY email")]
    finally:
        await conn.close()


_ADD_USER = "INSERT INTO users (email, name, password_hash) VALUES ($1, 'K', 'x')"


async def test_a_transaction_cancelled_during_its_begin_leaves_no_transaction_to_the_next_caller(
    clean_db: str, one_connection_db: Database
) -> None:
    backend = await _backend(one_connection_db)  # the connection is kept from now on

    async def cancelled() -> None:
        async with one_connection_db.transaction() as conn:
            await conn.execute(_ADD_USER, "never@x.io")

    victim = asyncio.create_task(cancelled())
    await asyncio.sleep(0)  # it has sent BEGIN and waits for the answer
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    admin = await asyncpg.connect(clean_db)
    try:

        async def begin_answered() -> bool:
            state = await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", backend)
            return bool(state != "active")

        await eventually(begin_answered)  # the session is in a transaction, unless it was rolled back
    finally:
        await admin.close()
    async with one_connection_db.transaction() as conn:
        await conn.execute(_ADD_USER, "next@x.io")
    await one_connection_db.execute(_ADD_USER, "after@x.io")
    assert await _committed_users(clean_db) == ["after@x.io", "next@x.io"]


async def test_a_connection_left_in_a_transaction_is_not_kept(clean_db: str, one_connection_db: Database) -> None:
    async with one_connection_db.connection() as conn:
        await conn.execute("BEGIN")
        await conn.execute(_ADD_USER, "uncommitted@x.io")
    await one_connection_db.execute(_ADD_USER, "committed@x.io")
    assert await _committed_users(clean_db) == ["committed@x.io"]


async def test_a_connection_still_cancelling_a_statement_is_not_kept(one_connection_db: Database) -> None:
    async with one_connection_db.connection() as conn:
        with contextlib.suppress(TimeoutError):  # asyncpg now cancels it at the server
            await conn.execute("SELECT pg_sleep(5)", timeout=0.05)
    # Given back to asyncpg, which waited for the cancellation before taking it.
    assert one_connection_db.pool.get_idle_size() == one_connection_db.pool.get_size()
    assert await one_connection_db.fetchval("SELECT 7") == 7


async def test_a_connection_whose_statement_failed_goes_back_to_the_pool_at_once(tiny_db: Database) -> None:
    with pytest.raises(asyncpg.DivisionByZeroError):
        await tiny_db.fetchval("SELECT 1 / 0")
    assert tiny_db.pool.get_idle_size() == tiny_db.pool.get_size()  # asyncpg reset it


async def test_closing_gives_kept_connections_back_without_waiting_for_them(
    clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("db.pool._KEPT_IDLE_SECONDS", 3600.0)  # never given back by the idle timer
    db = Database(await asyncpg.create_pool(clean_db, min_size=2, max_size=2), acquire_timeout=5.0)
    await asyncio.gather(_backend(db), _backend(db))
    # asyncpg's close waits for every connection lent out; the kept ones must come back.
    await asyncio.wait_for(db.close(600), 30)
