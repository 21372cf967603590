"""Token checks made together under a burst: how the users domain makes the one token
check of every authenticated request (server/domain/users.py `authenticate`).

A check is made alone (db/users.py `get`) when the pool would hand it a connection at
once, or while fewer than `alone_at_most` checks are under way alone: each then waits
in the pool's line in a place of its own, as every statement does. Beyond that, a check
that would wait for a connection waits in a batch: the first puts the batch in the line
as new work (like a request's first statement: the line serves work already started
first, and sheds new work), every check arriving meanwhile joins it, the batch closes
when it is handed its connection, and one statement (`get_many`) answers all of its
checks, each as it would have alone. So no check waits for another's answer; a burst
(a flash sale's buyers, a thousand connections) costs a statement per connection handed
over instead of one per request; and a check's query still starts after its request
arrived, so a session ended before is seen.

Why not `Batches` (server/domain/order_batches.py), and why checks alone first: with
checks waiting for the check under way, or batched as soon as they would wait, order_pay
lost 7 to 12% of its rate at 64 connections (a batch admits its requests together, and
their payments' statements then queue behind one another's); with up to 32 alone it
lost nothing (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from db import users as users_db
from db.pool import Database, Overloaded


@dataclass(slots=True)
class _Batch:
    since: float  # when its first check arrived
    checks: list[tuple[tuple[int, int], asyncio.Future[asyncpg.Record | None]]] = field(default_factory=list)


class TokenChecks:
    """This worker's token checks: (user id, session id) -> the user row the check reads
    (db/users.py `get`), or None when there is no such user. Built once, by the
    composition root."""

    def __init__(
        self, db: Database, shed_after: float, observe: Callable[[int], None], *, alone_at_most: int = 32
    ) -> None:
        self._db = db
        self._alone_at_most = alone_at_most
        self._shed_after = shed_after  # as the pool's line sheds new work (db/pool.py)
        self._observe = observe  # told each batch's size (of two or more)
        self._open: _Batch | None = None  # the batch waiting for its connection
        self._alone = 0  # checks under way alone
        self._running: set[asyncio.Task[None]] = set()

    async def check(self, user_id: int, session_id: int) -> asyncpg.Record | None:
        if self._open is None and (self._db.has_free_connection() or self._alone < self._alone_at_most):
            self._alone += 1
            try:
                return await users_db.get(self._db, user_id, session_id)
            finally:
                self._alone -= 1
        loop = asyncio.get_running_loop()
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(loop.time())
            # A context of its own: the batch is nobody's request (its statement is new
            # work in the line, and its log lines carry no request's id).
            task = loop.create_task(self._make(batch), context=contextvars.Context())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        elif self._shed_after and loop.time() - batch.since >= self._shed_after:
            # As the line sheds: the batch has waited that long, so would this check.
            raise Overloaded("the token checks waiting for a connection have waited too long")
        reply: asyncio.Future[asyncpg.Record | None] = loop.create_future()
        batch.checks.append(((user_id, session_id), reply))
        return await reply

    async def _make(self, batch: _Batch) -> None:
        try:
            async with self._db.connection() as conn:
                self._close(batch)
                pending = [(pair, reply) for pair, reply in batch.checks if not reply.done()]
                if not pending:  # every request waiting for it went away
                    return
                if len(pending) > 1:
                    self._observe(len(pending))
                rows = await users_db.get_many(conn, [pair for pair, _ in pending])
        except Exception as exc:
            self._close(batch)
            for _, reply in batch.checks:
                if not reply.done():
                    reply.set_exception(exc)
            return
        for (_, reply), row in zip(pending, rows, strict=True):
            if not reply.done():
                reply.set_result(row)

    def _close(self, batch: _Batch) -> None:
        """No check joins `batch` from now on: the next that would wait opens another."""
        if self._open is batch:
            self._open = None

    async def close(self) -> None:
        """Wait for the batches under way (at shutdown, before the pool closes)."""
        while self._running:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._running)
