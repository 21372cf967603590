"""Token checks made together under a burst: how the users domain makes the one token
check of every authenticated request (server/domain/users.py `authenticate`).

A check is made alone (db/users.py `get`), unless a batch is waiting, when the pool
would hand it a connection at once or while fewer than `alone_at_most` checks are under
way alone: each then waits in the pool's line in a place of its own, as every statement
does. Beyond that, a check that would wait for a connection waits in a batch: the first
puts the batch in the line as new work (like a request's first statement: the line
serves work already started first, and sheds new work; while it sheds, a check that
would wait is refused at once), every check arriving meanwhile joins it (up to
`_BATCH_MAX`), the batch closes when it is handed its connection, and one statement
(`get_many`) answers all of its checks, each as it would have alone. So no check waits for another's answer; a burst
(a flash sale's buyers, a thousand connections) costs a statement per connection handed
over instead of one per request; and a check's query still starts after its request
arrived, so a session ended before is seen.

Why not `Batches` (server/domain/order_batches.py), and why checks alone first: with
checks waiting for the check under way, or batched as soon as they would wait, order_pay
lost 6 to 15% of its rate at 64 connections (a batch admits its requests together, and
their payments' statements then queue behind one another's); with up to 32 alone it
lost nothing (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from db import users as users_db
from db.pool import Database, Overloaded, mark_work_started
from server.runtime.detached import Detached


@dataclass(slots=True)
class _Batch:
    checks: list[tuple[tuple[int, int], asyncio.Future[asyncpg.Record | None]]] = field(default_factory=list)


# Checks in one batch at most: primary-key lookups, a statement of a few milliseconds.
_BATCH_MAX = 256


class TokenChecks:
    """This worker's token checks: (user id, session id) -> the user row the check reads
    (db/users.py `get`), or None when there is no such user. Built once, by the
    composition root."""

    def __init__(self, db: Database, observe: Callable[[int], None], *, alone_at_most: int = 32) -> None:
        self._db = db
        self._alone_at_most = alone_at_most
        self._observe = observe  # told each batch's size (of two or more)
        self._open: _Batch | None = None  # the batch waiting for its connection
        self._alone = 0  # checks under way alone
        # The batches' own tasks: each batch's statement is new work in the line.
        self._batches = Detached()

    @property
    def waiting(self) -> int:
        """Checks in the batch waiting for its connection."""
        return len(self._open.checks) if self._open is not None else 0

    async def check(self, user_id: int, session_id: int) -> asyncpg.Record | None:
        db = self._db
        if self._open is None and (db.has_free_connection or self._alone < self._alone_at_most):
            self._alone += 1
            try:
                return await users_db.get(db, user_id, session_id)
            finally:
                self._alone -= 1
        if db.sheds_new_work:
            # As the line would shed this check alone (the batch waiting in it included).
            raise Overloaded("too much work is waiting for the database")
        batch = self._open
        if batch is None:
            batch = self._open = _Batch()
            self._batches.start(self._make(batch))
        reply: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
        batch.checks.append(((user_id, session_id), reply))
        if len(batch.checks) >= _BATCH_MAX:
            self._close(batch)
        row = await reply
        # The batch's statement ran in its own task: mark this request's next statements
        # as work already started, as a check made alone marks them (db/pool.py's lanes).
        mark_work_started()
        return row

    async def _make(self, batch: _Batch) -> None:
        try:
            async with self._db.connection() as conn:
                self._close(batch)
                pending = [(pair, reply) for pair, reply in batch.checks if not reply.done()]
                if len(pending) == 1:  # one check (none joined, or they went away): its own statement
                    [(pair, reply)] = pending
                    row = await users_db.get(conn, *pair)
                    if not reply.done():
                        reply.set_result(row)
                elif pending:
                    self._observe(len(pending))
                    rows = await users_db.get_many(conn, [pair for pair, _ in pending])
                    for (_, reply), row in zip(pending, rows, strict=True):
                        if not reply.done():
                            reply.set_result(row)
        except Exception as exc:  # an outage, a wait past DB_POOL_ACQUIRE_TIMEOUT, shed
            for _, reply in batch.checks:
                if not reply.done():
                    reply.set_exception(exc)
        except BaseException:  # cancelled (shutdown): so are the checks waiting for it
            for _, reply in batch.checks:
                reply.cancel()
            raise
        finally:
            self._close(batch)

    def _close(self, batch: _Batch) -> None:
        """No check joins `batch` from now on: the next that would wait opens another."""
        if self._open is batch:
            self._open = None

    async def close(self) -> None:
        """Wait for the batches under way (at shutdown, before the pool closes)."""
        await self._batches.close()
