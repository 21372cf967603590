"""Token checks made together once the pool is busy (server/domain/token_checks.py,
db/users.py `get_many`): on a real database, each check of a batch answers what it
would alone, and a batch waits in the pool's line as one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from aiohttp import web

from db import users as users_db
from db.pool import Database, Overloaded, end_request, new_request
from handlers.routing import CONTEXT
from server.domain.token_checks import TokenChecks
from tests.helpers import Api, User, eventually, new_work_in_line

NO_SUCH_USER = 10**12


def _pair(app: web.Application, user: User) -> tuple[int, int]:
    claims = app[CONTEXT].tokens.decode(user.token)
    return claims.user_id, claims.session_id


def _ids(rows: Sequence[asyncpg.Record | None]) -> list[int | None]:
    return [None if row is None else row["id"] for row in rows]


def _rows(rows: list[asyncpg.Record | None]) -> list[dict[str, object] | None]:
    return [None if row is None else dict(row) for row in rows]


async def test_checks_in_one_statement_answer_in_order_what_each_answers_alone(api: Api, app: web.Application) -> None:
    live, ended, other = await api.customer(), await api.customer(), await api.customer()
    assert (await api.call("POST", "/api/users/logout", json={}, token=ended.token)).status == 204
    (live_user, live_session), (ended_user, ended_session) = _pair(app, live), _pair(app, ended)
    pairs = [
        (live_user, live_session),
        (ended_user, ended_session),
        (live_user, _pair(app, other)[1]),  # someone else's session
        (NO_SUCH_USER, live_session),
        (live_user, live_session),
    ]
    db = app[CONTEXT].db
    many = await users_db.get_many(db, pairs)
    assert _rows(many) == _rows([await users_db.get(db, *pair) for pair in pairs])
    assert [None if row is None else row["session_live"] for row in many] == [True, False, None, None, True]
    assert _ids(many) == [live_user, ended_user, live_user, None, live_user]


async def _customers_pairs(api: Api, app: web.Application, count: int) -> list[tuple[int, int]]:
    customers = [await api.customer() for _ in range(4)]
    return [_pair(app, customers[n % 4]) for n in range(count)]


@contextlib.asynccontextmanager
async def _held(db: Database) -> AsyncIterator[None]:
    """The pool's one connection held; what the block starts is a request's first work."""
    async with db.connection():
        token = new_request()
        try:
            yield
        finally:
            end_request(token)


async def _checked_once_in_line(
    db: Database, checks: TokenChecks, pairs: list[tuple[int, int]], places: int
) -> list[asyncpg.Record | None]:
    """The checks of `pairs`, made once they take `places` places in the pool's line."""
    async with _held(db):
        waiting = [asyncio.create_task(checks.check(*pair)) for pair in pairs]
        await eventually(lambda: new_work_in_line(db, places))
    return await asyncio.gather(*waiting)


ONE_CONNECTION = {"db_pool_max_size": 1, "db_pool_min_size": 1, "db_pool_acquire_timeout": 120.0}


# (checks, alone_at_most, places they take in the line, the batch's size): all in one
# batch; or three alone, each in a place of its own, and the other five in one batch.
@pytest.mark.parametrize(("count", "alone_at_most", "places", "batch"), [(30, 0, 1, 30), (8, 3, 4, 5)])
@pytest.mark.parametrize("config_overrides", [ONE_CONNECTION])
async def test_checks_beyond_alone_at_most_that_would_wait_for_a_connection_are_made_as_one_batch(
    api: Api, app: web.Application, count: int, alone_at_most: int, places: int, batch: int
) -> None:
    db, sizes = app[CONTEXT].db, list[int]()
    pairs = await _customers_pairs(api, app, count)
    answers = await _checked_once_in_line(db, TokenChecks(db, sizes.append, alone_at_most=alone_at_most), pairs, places)
    assert _ids(answers) == [user for user, _ in pairs]
    assert all(row is not None and row["session_live"] is True for row in answers)
    assert sizes == [batch]


async def test_checks_that_get_a_connection_at_once_are_made_alone(api: Api, app: web.Application) -> None:
    sizes = list[int]()
    checks = TokenChecks(app[CONTEXT].db, sizes.append, alone_at_most=0)
    pairs = await _customers_pairs(api, app, 3)
    answers = await asyncio.gather(*(checks.check(*pair) for pair in pairs))
    assert _ids(answers) == [user for user, _ in pairs]
    assert sizes == []


@pytest.mark.parametrize("config_overrides", [ONE_CONNECTION])
async def test_a_cancelled_check_leaves_its_batch_and_the_others_are_answered(api: Api, app: web.Application) -> None:
    db, sizes = app[CONTEXT].db, list[int]()
    checks = TokenChecks(db, sizes.append, alone_at_most=0)
    pairs = await _customers_pairs(api, app, 3)
    async with _held(db):
        waiting = [asyncio.create_task(checks.check(*pair)) for pair in pairs]
        await eventually(lambda: new_work_in_line(db, 1))
        waiting[1].cancel()
    answers = await asyncio.gather(waiting[0], waiting[2])
    assert _ids(answers) == [pairs[0][0], pairs[2][0]]
    assert sizes == [2]


@pytest.mark.parametrize("config_overrides", [{**ONE_CONNECTION, "db_pool_shed_after": 0.05}])
async def test_a_check_that_would_wait_is_shed_at_once_while_the_line_sheds(api: Api, app: web.Application) -> None:
    db = app[CONTEXT].db
    checks = TokenChecks(db, lambda size: None, alone_at_most=0)
    first_pair, second_pair = await _customers_pairs(api, app, 2)
    async with _held(db):
        first = asyncio.create_task(checks.check(*first_pair))
        await eventually(lambda: new_work_in_line(db, 1))
        await asyncio.sleep(0.1)  # the batch has now waited in the line longer than shed_after
        with pytest.raises(Overloaded):
            await checks.check(*second_pair)
    row = await first
    assert row is not None and row["id"] == first_pair[0]


@pytest.mark.parametrize("config_overrides", [ONE_CONNECTION])
async def test_a_request_checked_in_a_batch_waits_for_its_next_statement_as_work_already_started(
    api: Api, app: web.Application
) -> None:
    db = app[CONTEXT].db
    checks = TokenChecks(db, lambda size: None, alone_at_most=0)
    [pair] = await _customers_pairs(api, app, 1)
    checked, go_on = asyncio.Event(), asyncio.Event()

    async def request() -> int:
        token = new_request()
        try:
            row = await checks.check(*pair)
            assert row is not None
            checked.set()
            await go_on.wait()
            user_id: int = await db.fetchval("SELECT $1::bigint", row["id"])  # the request's next statement
            return user_id
        finally:
            end_request(token)

    async with _held(db):
        made = asyncio.create_task(request())
        await eventually(lambda: new_work_in_line(db, 1))
        assert checks.waiting == 1  # its check, in a batch
    await checked.wait()
    async with _held(db):
        go_on.set()
        await eventually(lambda: _started_work_in_line(db, 1))
    assert await made == pair[0]


async def _started_work_in_line(db: Database, count: int) -> bool:
    return db.waiting == count and db.new_work_waiting == 0


async def test_a_batch_that_gets_no_connection_in_time_fails_each_of_its_checks(
    api: Api, app: web.Application, clean_db: str
) -> None:
    pairs = await _customers_pairs(api, app, 3)
    # A pool of its own, so that the short deadline counts only the batch's wait.
    db = Database(await asyncpg.create_pool(clean_db, min_size=1, max_size=1), acquire_timeout=0.1, shed_after=0.0)
    try:
        checks = TokenChecks(db, lambda size: None, alone_at_most=0)
        async with _held(db):
            answers = await asyncio.gather(*(checks.check(*pair) for pair in pairs), return_exceptions=True)
    finally:
        await db.close(5)
    assert [type(answer) for answer in answers] == [TimeoutError] * 3


@pytest.mark.parametrize("config_overrides", [ONE_CONNECTION])
async def test_tokens_checked_in_one_batch_each_get_their_own_answer(api: Api, app: web.Application) -> None:
    ctx = app[CONTEXT]
    live, ended = await api.customer(), await api.customer()
    assert (await api.call("POST", "/api/users/logout", json={}, token=ended.token)).status == 204
    ctx.token_checks = checks = TokenChecks(ctx.db, lambda size: None, alone_at_most=0)
    callers = [live, ended] * 10
    async with ctx.db.connection():
        replies = [asyncio.create_task(api.call("GET", "/api/users/profile", token=user.token)) for user in callers]
        await eventually(lambda: _waiting(checks, len(callers)))
    assert [reply.status for reply in await asyncio.gather(*replies)] == [200, 401] * 10
    assert all(reply.result().json["id"] == live.id for reply in replies[::2])


async def _waiting(checks: TokenChecks, count: int) -> bool:
    return checks.waiting == count
