"""Token checks made together (server/domain/users.py `token_checks`, db/users.py
`get_many`): on a real database, each check of a batch answers what it would alone."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from db import users as users_db
from handlers.routing import CONTEXT
from server.domain import users
from server.runtime.metrics import Metrics
from tests.helpers import Api, User

NO_SUCH_USER = 10**12


def _pair(app: web.Application, user: User) -> tuple[int, int]:
    claims = app[CONTEXT].tokens.decode(user.token)
    return claims.user_id, claims.session_id


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
    assert [None if row is None else row["id"] for row in many] == [live_user, ended_user, live_user, None, live_user]


async def test_checks_arriving_while_one_runs_are_made_together_next(api: Api, app: web.Application) -> None:
    ctx = app[CONTEXT]
    metrics = Metrics()
    checks = users.token_checks(ctx.db, ctx.config, metrics)
    customers = [await api.customer() for _ in range(4)]
    pairs = [_pair(app, customers[n % 4]) for n in range(30)]
    # The first check finds no check running and goes alone; the other 29 are all
    # queued in the same turn of the loop, before its answer can arrive.
    answers = await asyncio.gather(*(checks.place(None, pair) for pair in pairs))
    await checks.close()
    assert [row["id"] if row is not None else None for row in answers] == [user for user, _ in pairs]
    assert all(row is not None and row["session_live"] is True for row in answers)
    (histogram,) = metrics.token_check_batch_size.collect()
    sizes = {sample.name: sample.value for sample in histogram.samples}
    assert (sizes["token_check_batch_requests_count"], sizes["token_check_batch_requests_sum"]) == (1, 29)


async def test_tokens_checked_together_each_get_their_own_answer(api: Api) -> None:
    live, ended = await api.customer(), await api.customer()
    assert (await api.call("POST", "/api/users/logout", json={}, token=ended.token)).status == 204
    callers = [live, ended] * 10
    replies = await asyncio.gather(*(api.call("GET", "/api/users/profile", token=user.token) for user in callers))
    assert [reply.status for reply in replies] == [200, 401] * 10
    assert all(reply.json["id"] == live.id for reply in replies[::2])
