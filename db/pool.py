"""The one asyncpg pool of a worker, and what counts as a database outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, cast

import asyncpg


@dataclass(frozen=True)
class PoolSettings:
    dsn: str
    min_size: int
    max_size: int
    max_queries: int
    max_inactive_lifetime: float
    acquire_timeout: float
    command_timeout: float
    connect_timeout: float
    statement_cache_size: int


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release hook that skips asyncpg's default reset query.

    The default runs `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`: a
    round trip on every release. Pooled connections here never change session state
    (no SET, LISTEN, cursors or session advisory locks: migrations use their own
    connection), and asyncpg still rolls back any open transaction before this hook.
    """


class Database:
    """A pool plus the bookkeeping operators need: how long requests wait for a
    connection (`on_wait`), and a fixed acquire timeout so that an exhausted pool
    answers 503 instead of queueing forever."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout: float) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.on_wait: Callable[[float], None] | None = None

    def connection(self) -> _Acquire:
        return _Acquire(self)

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with _Acquire(self) as conn:
            return await conn.fetchrow(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with _Acquire(self) as conn:
            return await conn.fetch(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with _Acquire(self) as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with _Acquire(self) as conn:
            return await conn.execute(query, *args)

    async def close(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except TimeoutError:
            self.pool.terminate()


class _Acquire:
    __slots__ = ("_conn", "_db")

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Any = None  # the pool's proxy of the connection

    async def __aenter__(self) -> asyncpg.Connection:
        db = self._db
        started = time.perf_counter()
        self._conn = await db.pool.acquire(timeout=db.acquire_timeout)
        if db.on_wait is not None:
            db.on_wait(time.perf_counter() - started)
        return cast(asyncpg.Connection, self._conn)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conn is not None
        await self._db.pool.release(self._conn)


class _Transaction:
    __slots__ = ("_acquire", "_tx")

    def __init__(self, db: Database) -> None:
        self._acquire = _Acquire(db)
        self._tx: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        conn = await self._acquire.__aenter__()
        try:
            self._tx = conn.transaction()
            await self._tx.start()
        except BaseException:
            await self._acquire.__aexit__(None, None, None)
            raise
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                await self._tx.commit()
            else:
                await self._tx.rollback()
        finally:
            await self._acquire.__aexit__(exc_type, exc, tb)


async def create_database(settings: PoolSettings) -> Database:
    pool = await asyncpg.create_pool(
        settings.dsn,
        min_size=settings.min_size,
        max_size=settings.max_size,
        max_queries=settings.max_queries,
        max_inactive_connection_lifetime=settings.max_inactive_lifetime,
        command_timeout=settings.command_timeout,
        timeout=settings.connect_timeout,
        statement_cache_size=settings.statement_cache_size,
        server_settings={"application_name": "storefront"},
        reset=_keep_session,
    )
    return Database(pool, settings.acquire_timeout)


_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # no free connection, or a statement ran past DB_COMMAND_TIMEOUT
    asyncpg.PostgresConnectionError,  # connection lost or not established
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # deadlock/serialization: retry later
    asyncpg.InterfaceError,  # the pool or connection was closed under us
)


def is_outage(exc: BaseException) -> bool:
    """True when `exc` means the database cannot serve now (the client may retry)."""
    return isinstance(exc, _OUTAGE_ERRORS)


class Executor(Protocol):
    """Where one statement can run: the pool (autocommit) or a connection in a
    transaction. Data functions that may take part in a caller's transaction take
    one of these."""

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None: ...

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...
