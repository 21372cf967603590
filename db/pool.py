"""The one asyncpg pool of a worker, and what counts as a database outage."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import errno
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from opentelemetry.trace import Tracer, get_current_span

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSettings:
    dsn: str
    min_size: int
    max_size: int
    max_queries: int
    max_inactive_lifetime: float
    acquire_timeout: float
    command_timeout: float
    # New work is turned away at once while the oldest new work in line has waited this
    # long (0: never; acquire_timeout still bounds every wait).
    shed_after: float
    connect_timeout: float
    statement_cache_size: int


async def _check_connection(conn: asyncpg.Connection) -> None:
    # db/products.py writes search terms into statements as literals, quoting them by
    # doubling single quotes: only right with standard-conforming strings.
    if conn.get_settings().standard_conforming_strings != "on":
        raise RuntimeError("standard_conforming_strings must be on")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release hook that skips asyncpg's default reset query.

    The default runs `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`: a
    round trip on every release. Pooled connections here never change session state
    (no SET, LISTEN, cursors or session advisory locks: migrations use their own
    connection), and asyncpg still rolls back any open transaction before this hook.
    """


class SessionWatcher(Protocol):
    """Sees what PostgreSQL says to the pooled sessions beyond query results: its
    NOTICE messages (`notice`, called during the statement that raised them, before
    the statement's result reaches its caller) and each connection's return to the
    pool (`released`, once its statement or transaction is over). `conn` is the
    object the caller held (the pool's proxy), the same in both calls."""

    def notice(self, conn: object, message: asyncpg.PostgresLogMessage) -> None: ...

    def released(self, conn: object) -> None: ...


class Database:
    """A pool plus the bookkeeping operators need: how long requests that found every
    connection busy waited for one (`on_wait`), and a fixed acquire timeout so that an
    exhausted pool answers 503 instead of queueing forever.

    Requests wait for a connection in a strict first-come, first-served line (a
    semaphore sized like the pool). asyncpg's own queue lets a newcomer take a
    connection that was just released for a woken waiter, which then rejoins at the
    back: under load that starves a few requests for seconds (a p99 hundreds of
    times the median).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        acquire_timeout: float,
        watcher: SessionWatcher | None = None,
        shed_after: float = 0.0,
    ) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.on_wait: Callable[[float], None] | None = None
        self.watcher = watcher
        self._acquire: Callable[[Database], _Acquire] = _Acquire
        self._line = _Line(pool.get_max_size(), acquire_timeout, shed_after)
        self._kept = _Kept(pool, watcher)

    @property
    def idle(self) -> int:
        """Open connections not serving a statement or transaction now."""
        return self.pool.get_idle_size() + self._kept.count

    @property
    def waiting(self) -> int:
        """Requests (and actors) waiting in line for a connection now."""
        return self._line.waiting

    @property
    def has_free_connection(self) -> bool:
        """Whether a statement now would be handed a connection at once."""
        return self._line.has_free_slot

    @property
    def sheds_new_work(self) -> bool:
        """Whether new work now would be refused at once (Overloaded)."""
        return self._line.sheds_new_work

    @property
    def new_work_waiting(self) -> int:
        """New work (requests at their first statement) waiting in line now: the lane
        shedding is measured on, without the worker's upkeep and actors' commands."""
        return self._line.new_work_waiting

    async def ping(self) -> None:
        """One trivial statement that is never shed: a readiness probe asks whether
        the database answers, not whether the service is busy (a busy replica taken
        out of its load balancer only pushes its load onto the others)."""
        token = _work_started.set(True)
        try:
            await self.fetchval("SELECT 1")
        finally:
            _work_started.reset(token)

    def trace_with(self, tracer: Tracer) -> None:
        """Make each wait for a connection a span of its own (tracing is on)."""
        self._acquire = functools.partial(_TracedAcquire, tracer=tracer)

    def connection(self) -> _Acquire:
        return self._acquire(self)

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self._acquire(self) as conn:
            return await conn.fetchrow(query, *args)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._acquire(self) as conn:
            return await conn.fetch(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self._acquire(self) as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self._acquire(self) as conn:
            return await conn.execute(query, *args)

    async def close(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._close_pool(), timeout)
        except TimeoutError:
            self.pool.terminate()

    async def _close_pool(self) -> None:
        await self._kept.give_all_back()
        await self.pool.close()


# Whether the current request (or actor) has had a connection already: its work has
# started. The HTTP layer starts every request with `new_request`.
_work_started: contextvars.ContextVar[bool] = contextvars.ContextVar("db_work_started", default=False)


def new_request() -> contextvars.Token[bool]:
    return _work_started.set(False)


def end_request(token: contextvars.Token[bool]) -> None:
    _work_started.reset(token)


def mark_work_started() -> None:
    """For tasks that carry on work already admitted (order actors)."""
    _work_started.set(True)


class Overloaded(TimeoutError):
    """New work turned away at once: the line is already longer than it may wait."""


class _Line:
    """First come, first served admission to `size` slots, with a deadline, in two
    lanes: work already started (a request's second statement, an actor's command)
    is served before work not yet started. Under overload the line then finishes
    what it began and turns the excess away at its first wait (503 after the
    timeout), rather than making every request wait once per statement.

    And it sheds (`shed_after` > 0): while the oldest new work in line has waited
    `shed_after` seconds, new work is refused at once (Overloaded, a 503) instead of
    queueing behind it, where it would wait at least as long. The line then holds
    about `shed_after` seconds of work, whatever the number of clients: the requests
    served keep a bounded wait, and the excess learns so immediately.

    Waiters that pass their deadline get TimeoutError from one shared timer
    (checking a few times a second), not from a timer each: the wait is measured
    in seconds, and a timer per request is a cost on the hot path.
    """

    __slots__ = ("_free", "_new", "_reaper", "_shed_after", "_started", "_timeout")

    def __init__(self, size: int, timeout: float, shed_after: float) -> None:
        self._free = size
        self._timeout = timeout
        self._shed_after = shed_after
        self._started: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self._new: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self._reaper: asyncio.TimerHandle | None = None

    @property
    def has_free_slot(self) -> bool:
        return bool(self._free) and not self._new and not self._started

    @property
    def sheds_new_work(self) -> bool:
        return self._sheds_at(asyncio.get_running_loop().time())

    def _sheds_at(self, now: float) -> bool:
        return bool(self._shed_after) and self._waited_longest(now) >= self._shed_after

    async def enter(self, started: bool = False) -> float:
        """Take a slot; returns how long this waited in line (0.0 when a slot was free)."""
        if self.has_free_slot:
            self._free -= 1
            return 0.0
        loop = asyncio.get_running_loop()
        queued_at = loop.time()
        if not started and self._sheds_at(queued_at):
            raise Overloaded("too much work is waiting for the database")
        waiter: asyncio.Future[None] = loop.create_future()
        (self._started if started else self._new).append((queued_at + self._timeout, waiter))
        if self._reaper is None:
            self._reaper = loop.call_later(_REAP_SECONDS, self._reap)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # The slot was handed over just as we were cancelled (not a deadline the
                # reaper set: then no slot was ours to give back).
                self.leave()
            raise
        return loop.time() - queued_at

    @property
    def waiting(self) -> int:
        return sum(not waiter.done() for lane in (self._started, self._new) for _, waiter in lane)

    @property
    def new_work_waiting(self) -> int:
        return sum(not waiter.done() for _, waiter in self._new)

    def _waited_longest(self, now: float) -> float:
        """How long the oldest new work still in line has waited."""
        lane = self._new
        while lane and lane[0][1].done():  # gone (cancelled, timed out): not waiting
            lane.popleft()
        return now - (lane[0][0] - self._timeout) if lane else 0.0

    def leave(self) -> None:
        for lane in (self._started, self._new):
            while lane:
                _, waiter = lane.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot passes straight to the next in line
                    return
        self._free += 1

    def _reap(self) -> None:
        self._reaper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for lane in (self._started, self._new):
            # Each lane is in arrival order with one timeout: the oldest expire first.
            while lane and (lane[0][0] <= now or lane[0][1].done()):
                _, waiter = lane.popleft()
                if not waiter.done():
                    waiter.set_exception(TimeoutError("no database connection became free in time"))
        if self._started or self._new:
            self._reaper = loop.call_later(_REAP_SECONDS, self._reap)


_REAP_SECONDS = 0.25


class _Kept:
    """Connections kept between one statement (or transaction) and the next, so that
    the next takes one at once: asyncpg's release and acquire of a pooled connection
    (a task to shield the release, an inactivity timer, a proxy, a future, its queue)
    cost as much of the event loop's time as a short statement itself (a `SELECT 1`:
    about 35 us more than on a connection held throughout, 80 against 47).

    A connection is kept only after a clean end: no error, and asyncpg and the server
    both done with it (`_at_rest`). It is given back to asyncpg every `_KEPT_USES`th
    use, so that the pool's own rules still apply at that release (DB_POOL_MAX_QUERIES
    closes it), and once it has sat unused for `_KEPT_IDLE_SECONDS`, so that
    DB_POOL_MAX_INACTIVE_LIFETIME counts from then. The most recently used is taken
    first: under light load the others go back and the pool can shrink. Kept
    connections are not in asyncpg's idle count (`Database.idle` adds them) and are
    what `close` gives back first.

    As asyncpg's release and acquire do, each use gets a proxy of its own: the last
    one's is detached when the connection is kept (so a connection, prepared statement
    or cursor used past its `async with` block raises instead of running on the next
    caller's session), and a new one is made when it is taken. A connection lost while
    kept (the database restarted or failed over) is taken back by asyncpg at once: it
    is skipped when taken.
    """

    __slots__ = ("_closing", "_conns", "_giving_back", "_pool", "_timer", "_watcher")

    def __init__(self, pool: asyncpg.Pool, watcher: SessionWatcher | None) -> None:
        self._pool = pool
        self._watcher = watcher
        # (kept at, asyncpg's holder and connection, its uses since asyncpg gave it
        # out), oldest first.
        self._conns: list[tuple[float, Any, asyncpg.Connection, int]] = []
        self._giving_back: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def count(self) -> int:
        """Kept connections still open (one lost stays listed until taken or timed out)."""
        return sum(_still_lent(holder, con) and not con.is_closed() for _, holder, con, _ in self._conns)

    def take(self) -> tuple[Any, int] | None:
        """The most recently kept connection that is still open (a new proxy of it),
        and its uses."""
        while self._conns:
            _, holder, con, uses = self._conns.pop()
            if not _still_lent(holder, con):
                continue  # lost while kept: asyncpg has it back already
            conn = _lend(holder, con)
            if not con.is_closed():
                return conn, uses
            self._give_back(conn)
        return None

    def keep(self, conn: Any, uses: int) -> bool:
        """Keep `conn` (the pool's proxy) for the next statement, unless it is due back
        to asyncpg."""
        if uses >= _KEPT_USES or self._closing or not _at_rest(conn):
            return False
        holder, con = conn._holder, conn._detach()
        con._pool_release_ctr += 1  # its prepared statements and cursors refuse use too
        loop = asyncio.get_running_loop()
        self._conns.append((loop.time(), holder, con, uses))
        if self._timer is None:
            self._timer = loop.call_later(_KEPT_IDLE_SECONDS, self._give_idle_back)
        return True

    def _give_idle_back(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        cutoff = loop.time() - _KEPT_IDLE_SECONDS
        idle = [entry for entry in self._conns if entry[0] <= cutoff]
        self._conns = [entry for entry in self._conns if entry[0] > cutoff]
        self._give_back_kept(idle)
        if self._conns:
            self._timer = loop.call_later(_KEPT_IDLE_SECONDS, self._give_idle_back)

    def _give_back_kept(self, entries: list[tuple[float, Any, asyncpg.Connection, int]]) -> None:
        for _, holder, con, _ in entries:
            if _still_lent(holder, con):  # (one lost while kept is asyncpg's already)
                self._give_back(_lend(holder, con))

    def _give_back(self, conn: Any) -> None:
        task = asyncio.ensure_future(_release(self._pool, self._watcher, conn))
        self._giving_back.add(task)
        task.add_done_callback(self._given_back)

    def _given_back(self, task: asyncio.Task[None]) -> None:
        self._giving_back.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # asyncpg terminates a connection whose release fails; nobody waits for this one.
            log.warning("giving a kept connection back to the pool failed", exc_info=error)

    async def give_all_back(self) -> None:
        """For closing: from now on every connection goes straight back to asyncpg."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conns, self._conns = self._conns, []
        self._give_back_kept(conns)
        await asyncio.gather(*self._giving_back, return_exceptions=True)


# A kept connection goes back to asyncpg after this many uses, or this long unused.
_KEPT_USES = 64
_KEPT_IDLE_SECONDS = 1.0


def _at_rest(conn: Any) -> bool:
    """Whether `conn` (the pool's proxy) may serve the next caller as it is: still
    attached (asyncpg detaches one it lost), open, no transaction as the server last
    said, none as asyncpg knows it (a BEGIN still unanswered counts), and no
    cancellation under way. These are asyncpg's own attributes, which its pool's
    release checks too; read on the connection itself, as the proxy forwards
    attributes through a failed lookup (0.9 us for these two, against 0.04)."""
    con = conn._con
    return con is not None and not (
        con.is_closed() or con.is_in_transaction() or con._top_xact is not None or con._protocol._is_cancelling()
    )


def _still_lent(holder: Any, con: asyncpg.Connection) -> bool:
    """Whether asyncpg's holder still lends this connection (it takes back, and may
    reconnect, a holder whose connection was lost)."""
    return holder._con is con


def _lend(holder: Any, con: asyncpg.Connection) -> Any:
    """A new proxy of a kept connection, made as asyncpg's acquire makes one."""
    proxy = PoolConnectionProxy(holder, con)
    holder._proxy = proxy
    return proxy


async def _release(pool: asyncpg.Pool, watcher: SessionWatcher | None, conn: Any) -> None:
    """Give a connection back to asyncpg (a detached one, lost already, is a no-op)."""
    if watcher is not None:
        # Listeners must be gone when asyncpg takes the connection back.
        with contextlib.suppress(asyncpg.InterfaceError):
            if not conn.is_closed():
                conn.remove_log_listener(watcher.notice)
    await pool.release(conn)


class _Acquire:
    __slots__ = ("_conn", "_db", "_uses")

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: Any = None  # the pool's proxy of the connection
        self._uses = 0

    async def __aenter__(self) -> asyncpg.Connection:
        db = self._db
        line = db._line
        started = _work_started.get()
        waited = await line.enter(started)
        kept = db._kept.take()
        if kept is not None:
            self._conn, uses = kept
            self._uses = uses + 1
        else:
            try:
                # Never waits for a busy connection (the line admits at most max_size),
                # only for a new one to be opened, which DB_CONNECT_TIMEOUT bounds.
                self._conn = await db.pool.acquire()
            except BaseException:
                line.leave()
                raise
            self._uses = 1
            if db.watcher is not None:
                # Kept while the connection is (here and in _Kept); removed before
                # asyncpg takes it back.
                self._conn.add_log_listener(db.watcher.notice)
        if not started:
            _work_started.set(True)
        if waited and db.on_wait is not None:
            db.on_wait(waited)
        return cast(asyncpg.Connection, self._conn)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conn is not None
        db = self._db
        try:
            if db.watcher is not None:
                db.watcher.released(self._conn)
            if exc is None and db._kept.keep(self._conn, self._uses):
                return
            # A connection lost mid-statement (the database restarted, failed over) is
            # already back in the pool: asyncpg detaches the proxy, which then refuses
            # every call, and there is nothing left to terminate or release. The place
            # in line is given back all the same (finally).
            with contextlib.suppress(asyncpg.InterfaceError):
                if exc is not None and _may_be_broken(exc):
                    # The connection may be broken, or half way through an operation the
                    # server never finished: never hand it to the next request. (The pool
                    # replaces it; its release of a closed connection just frees the slot.)
                    self._conn.terminate()
            await _release(db.pool, db.watcher, self._conn)
        finally:
            db._line.leave()


class _TracedAcquire(_Acquire):
    __slots__ = ("_tracer",)

    def __init__(self, db: Database, tracer: Tracer) -> None:
        super().__init__(db)
        self._tracer = tracer

    async def __aenter__(self) -> asyncpg.Connection:
        if not get_current_span().is_recording():  # a trace not sampled: no span to make
            return await super().__aenter__()
        with self._tracer.start_as_current_span("db.pool.acquire"):
            return await super().__aenter__()


class _Transaction:
    __slots__ = ("_acquire", "_tx")

    def __init__(self, db: Database) -> None:
        self._acquire = db.connection()
        self._tx: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        conn = await self._acquire.__aenter__()
        try:
            self._tx = conn.transaction()
            # As a context manager: asyncpg then knows the transaction is managed, and
            # does not report resetting one whose BEGIN was cancelled as an error.
            await self._tx.__aenter__()
        except BaseException as error:
            # With the error: a BEGIN cancelled or timed out may be answered later, and
            # leave the session in a transaction that the next caller must never inherit.
            await self._acquire.__aexit__(type(error), error, error.__traceback__)
            raise
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._tx.__aexit__(exc_type, exc, tb)  # COMMIT, or ROLLBACK after an error
        except BaseException as error:
            await self._acquire.__aexit__(type(error), error, error.__traceback__)  # never kept
            raise
        await self._acquire.__aexit__(exc_type, exc, tb)


async def create_database(settings: PoolSettings, watcher: SessionWatcher | None = None) -> Database:
    pool = await asyncpg.create_pool(
        settings.dsn,
        min_size=settings.min_size,
        max_size=settings.max_size,
        max_queries=settings.max_queries,
        max_inactive_connection_lifetime=settings.max_inactive_lifetime,
        command_timeout=settings.command_timeout,
        timeout=settings.connect_timeout,
        statement_cache_size=settings.statement_cache_size,
        # (sql/014_caching.sql sends catalog change notices to sessions of this name.)
        server_settings={"application_name": "storefront"},
        init=_check_connection,
        reset=_keep_session,
    )
    return Database(pool, settings.acquire_timeout, watcher, settings.shed_after)


_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted
    socket.gaierror,  # the database's host name does not resolve
    TimeoutError,  # no free connection, or a statement ran past DB_COMMAND_TIMEOUT
    asyncpg.PostgresConnectionError,  # connection lost or not established
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # deadlock/serialization: retry later
    # A write reached a member that is (again) a read-only standby: the leader it was
    # changed under a failover, and the load balancer has not moved the connection yet.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.InterfaceError,  # the pool or connection was closed under us
    asyncpg.InternalClientError,  # a connection left mid-operation by a failure
)


# Network errors without an exception class of their own.
_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ETIMEDOUT})


def is_outage(exc: BaseException) -> bool:
    """True when `exc` means the database cannot serve now (the client may retry).
    Other OSErrors (a file name too long, a missing file) are bugs or bad input, not
    an outage: they must not turn into 503s, nor be logged as one."""
    return isinstance(exc, _OUTAGE_ERRORS) or (isinstance(exc, OSError) and exc.errno in _UNREACHABLE)


# Of those, the errors after which a connection cannot be trusted. A deadlock, a
# serialization failure, a cancelled statement or a full disk leave it usable (the
# transaction is rolled back), so it goes back to the pool.
_BROKEN_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def _may_be_broken(exc: BaseException) -> bool:
    return isinstance(exc, _BROKEN_CONNECTION_ERRORS)


class Executor(Protocol):
    """Where one statement can run: the pool (autocommit) or a connection in a
    transaction. Data functions that may take part in a caller's transaction take
    one of these."""

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None: ...

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> str: ...
