"""This process's liveness lock (see db/liveness.py).

Work a worker process starts and may not finish (a charge or a refund whose provider
call is in flight) records `worker`, this process's id, while the lock is held. The
reconciler of any process treats pending work whose worker's lock is free as
abandoned and settles it at once, instead of waiting for its lease to run out; a
slow process that is still alive keeps its lock, and so its work.

The lock lives on a dedicated connection (never a pooled one, whose session is
shared). A keeper checks it every second and takes the lock again after the
connection was lost; meanwhile `worker` is None, and new work relies on its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import asyncpg

from db import liveness as liveness_db
from db.pool import is_outage

log = logging.getLogger(__name__)

_CHECK_SECONDS = 1.0
_MAX_ID = 2**31 - 1


class Liveness:
    def __init__(self, dsn: str, connect_timeout: float) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._id = 1 + secrets.randbelow(_MAX_ID)
        self._task: asyncio.Task[None] | None = None

    @property
    def worker(self) -> int | None:
        """This process's id while its lock is held, else None."""
        conn = self._conn
        return self._id if conn is not None and not conn.is_closed() else None

    async def start(self) -> None:
        await self._acquire()
        self._task = asyncio.create_task(self._keep(), name="liveness")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    async def _acquire(self) -> None:
        try:
            conn = await asyncpg.connect(
                self._dsn, timeout=self._connect_timeout, server_settings={"application_name": "storefront-liveness"}
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            log.warning("liveness lock unavailable: database unreachable")
            return
        try:
            while not await liveness_db.try_lock(conn, self._id):
                # Another session holds this id: our own earlier session, not yet
                # gone on the server, or (rarely) another process. Take a new one.
                self._id = 1 + secrets.randbelow(_MAX_ID)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:
                conn.terminate()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(_CHECK_SECONDS)
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = None
                    await self._acquire()
                else:
                    await asyncio.wait_for(liveness_db.ping(self._conn), self._connect_timeout)
            except Exception as exc:
                if not is_outage(exc):
                    log.exception("liveness keeper failed")
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.terminate()  # lost or hung: the lock goes with the session
