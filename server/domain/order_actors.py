"""Per-order actors: the in-process half of the orders design.

Every command on an existing order (change its items or status, delete it, pay it,
expire it) is sent to that order's actor: an aiojobs job with a bounded mailbox that
runs one command at a time. So work on one order never races with itself inside a
worker, a slow payment provider holds up only the order being paid, and the actor
can keep the order's expiry timer.

Actors are cheap and short-lived: one starts with the first command for an order
and stops when its mailbox has been empty for ACTOR_IDLE_SECONDS, leaving nothing
behind. An actor that crashes (an unexpected exception) is logged with its order id
and discarded; commands still queued go to a fresh actor, which, like every actor,
reads the order from the database and never trusts what an earlier one held.

This is not where correctness across processes comes from: every command is one
database transaction that locks and re-checks what it changes (see db/orders.py).

The machinery is generic in the key: webhook deliveries run in actors of their own,
one per (webhook, resource) queue (server/domain/webhooks.py), under a second
supervisor of the same kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import aiojobs
from opentelemetry.trace import Tracer

from db.pool import is_outage, mark_work_started
from db.refusals import Refusal
from server.runtime.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
Command = Callable[["Actor[Any]"], Awaitable[T]]


@dataclass(slots=True)
class _Envelope:
    command: Command[Any]
    reply: asyncio.Future[Any]
    # The sender's context: the command runs in it, so its log lines carry the
    # request's id and its spans join the request's trace.
    context: contextvars.Context
    queued_ns: int
    started: bool = False


class Actor(Generic[K]):
    """One order's (or queue's) mailbox and the task that works through it."""

    __slots__ = ("_expiry_deadline", "_supervisor", "key", "mailbox")

    def __init__(self, key: K, supervisor: Supervisor[K], mailbox: asyncio.Queue[_Envelope | None]) -> None:
        # The order's id (order actors), or what else the supervisor's actors serve one
        # at a time (a webhook's queue of deliveries about one resource).
        self.key = key
        self.mailbox = mailbox
        self._expiry_deadline: float | None = None
        self._supervisor = supervisor

    def note_expiry(self, expires_at: datetime | None) -> None:
        """Commands report the order's expires_at as they read it; a live actor
        expires its order on time (the sweeper covers orders with no live actor)."""
        if expires_at is None:
            self._expiry_deadline = None
            return
        delay = expires_at.timestamp() - self._supervisor.wall_clock()
        self._expiry_deadline = asyncio.get_running_loop().time() + max(0.0, delay)

    @property
    def keeps_expiry_timer(self) -> bool:
        return self._expiry_deadline is not None

    async def run(self) -> None:
        supervisor = self._supervisor
        mark_work_started()  # commands were admitted by their requests: they go first
        try:
            while (envelope := await self._next()) is not None:
                if envelope.reply.done():
                    continue  # the caller left, or gave up waiting, before it started: skip it
                envelope.started = True
                try:
                    result = await asyncio.create_task(self._perform(envelope), context=envelope.context)
                except Refusal as exc:
                    _reply_error(envelope.reply, exc)
                except Exception as exc:
                    _reply_error(envelope.reply, exc)
                    if not is_outage(exc):
                        raise
                except BaseException:
                    # Cancelled (a drain past its grace, or the command's own task):
                    # its caller is answered all the same, never left waiting.
                    _reply_error(envelope.reply, Refusal("command_interrupted"))
                    raise
                else:
                    if not envelope.reply.done():
                        envelope.reply.set_result(result)
        except Exception:
            log.exception(f"{supervisor.kind} actor crashed", extra={"key": str(self.key)})
            supervisor.metrics.actor_crashes.inc()
        finally:
            supervisor._retire(self)

    async def _perform(self, envelope: _Envelope) -> Any:
        mark_work_started()  # in the sender's context too: the command was admitted
        tracer = self._supervisor.tracer
        if tracer is not None:
            tracer.start_span("order.mailbox_wait", start_time=envelope.queued_ns).end()
        return await envelope.command(self)

    async def _next(self) -> _Envelope | None:
        """The next command; None when the actor should stop (idle or draining)."""
        supervisor = self._supervisor
        loop = asyncio.get_running_loop()
        while True:
            if not self.mailbox.empty():
                envelope = self.mailbox.get_nowait()
                if envelope is not None:
                    return envelope
                continue  # a wake-up from drain(): re-check below
            if supervisor.draining:
                return None
            now = loop.time()
            wait = supervisor.idle_seconds
            if self._expiry_deadline is not None:
                wait = min(wait, self._expiry_deadline - now)
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    envelope = await self.mailbox.get()
            except TimeoutError:
                if self._expiry_deadline is not None and loop.time() >= self._expiry_deadline:
                    await self._expire()
                    continue
                if self.mailbox.empty():
                    return None  # idle: stop; nothing is kept for this order
                continue
            if envelope is not None:
                return envelope

    async def _expire(self) -> None:
        # One attempt: whatever the outcome (expired, paid meanwhile, payment in flight
        # elsewhere, database down) the timer is dropped, and the sweeper covers the rest.
        self._expiry_deadline = None
        expire = self._supervisor.expire
        assert expire is not None, "only commands of a supervisor that can expire note an expiry"
        try:
            await expire(self.key)
        except Exception:
            log.warning("actor could not expire its order; the sweeper will", exc_info=True, extra={"key": self.key})


def _reply_error(reply: asyncio.Future[Any], exc: BaseException) -> None:
    if not reply.done():
        reply.set_exception(exc)


@dataclass(kw_only=True)
class Supervisor(Generic[K]):
    scheduler: aiojobs.Scheduler
    metrics: Metrics
    max_live: int
    mailbox_size: int
    idle_seconds: float
    # What an actor's expiry timer runs (None: the actors of this kind keep none).
    expire: Callable[[K], Awaitable[object]] | None = None
    kind: str = "order"
    # Most commands of one user in flight here (queued or running), whatever orders
    # they are about: one customer's flood fills no more than this of the mailboxes.
    max_per_user: int = 16
    queue_timeout: float = 5.0
    wall_clock: Callable[[], float] = time.time
    tracer: Tracer | None = None
    draining: bool = False
    _actors: dict[K, Actor[K]] = field(default_factory=dict)
    _per_user: dict[int, int] = field(default_factory=dict)
    _restarts: set[asyncio.Task[object]] = field(default_factory=set)

    def tell(self, key: K, command: Command[object]) -> bool:
        """Queue `command` without waiting for it; False when it cannot be queued
        now (draining, too many actors, a full mailbox). Its failures are the
        command's own business (an actor logs a crash)."""
        if self.draining:
            return False
        actor = self._actors.get(key)
        if actor is None:
            if len(self._actors) >= self.max_live:
                return False
            actor = self._spawn(key, asyncio.Queue(self.mailbox_size))
        reply: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        reply.add_done_callback(_ignore_outcome)
        try:
            actor.mailbox.put_nowait(_Envelope(command, reply, contextvars.copy_context(), time.time_ns()))
        except asyncio.QueueFull:
            return False
        return True

    async def ask(self, key: K, command: Command[T], user_id: int | None = None) -> T:
        """Run `command` in the actor of `key` (an order), after the commands queued
        before it. `user_id`: the (already authorized) user it is for, held to
        `max_per_user`. Refused when the command cannot be queued or waits too long."""
        if self.draining:
            raise Refusal("shutting_down")
        if user_id is None:
            return await self._ask(key, command)
        in_flight = self._per_user.get(user_id, 0)
        if in_flight >= self.max_per_user:
            self.metrics.mailbox_rejections.labels("user").inc()
            raise Refusal("too_many_in_progress")
        self._per_user[user_id] = in_flight + 1
        try:
            return await self._ask(key, command)
        finally:
            if (left := self._per_user[user_id] - 1) > 0:
                self._per_user[user_id] = left
            else:
                del self._per_user[user_id]

    async def _ask(self, key: K, command: Command[T]) -> T:
        actor = self._actors.get(key)
        if actor is None:
            if len(self._actors) >= self.max_live:
                self.metrics.mailbox_rejections.labels("actors").inc()
                raise Refusal("too_many_actors")
            actor = await self._start(key, asyncio.Queue(self.mailbox_size))
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[T] = loop.create_future()
        envelope = _Envelope(command, reply, contextvars.copy_context(), time.time_ns())
        try:
            actor.mailbox.put_nowait(envelope)
        except asyncio.QueueFull:
            self.metrics.mailbox_rejections.labels("mailbox").inc()
            raise Refusal("mailbox_full") from None
        # The wait before the command starts is bounded (the overload bound): past it
        # the caller gets 503 at once and the actor skips the command.
        timer = loop.call_later(self.queue_timeout, self._give_up, envelope)
        try:
            return await reply
        finally:
            timer.cancel()

    def _give_up(self, envelope: _Envelope) -> None:
        if not envelope.started and not envelope.reply.done():
            self.metrics.mailbox_rejections.labels("queue_timeout").inc()
            envelope.reply.set_exception(Refusal("queue_timeout"))

    async def _start(self, key: K, mailbox: asyncio.Queue[_Envelope | None]) -> Actor[K]:
        actor = Actor(key, self, mailbox)
        # Registered before spawn: the scheduler has no limit, so spawn never waits and
        # no other command can slip in between.
        self._actors[key] = actor
        await self.scheduler.spawn(actor.run(), name=f"{self.kind}-{key}")
        return actor

    def _spawn(self, key: K, mailbox: asyncio.Queue[_Envelope | None]) -> Actor[K]:
        """`_start` for callers that cannot wait (spawning never blocks: no limit)."""
        actor = Actor(key, self, mailbox)
        self._actors[key] = actor
        task = asyncio.get_running_loop().create_task(self.scheduler.spawn(actor.run(), name=f"{self.kind}-{key}"))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)
        return actor

    def _retire(self, actor: Actor[K]) -> None:
        if self._actors.get(actor.key) is actor:
            del self._actors[actor.key]
        if not actor.mailbox.empty() and not self.scheduler.closed:
            # A crash left commands behind: hand them to a fresh actor.
            self._spawn(actor.key, actor.mailbox)

    def live_order_ids(self) -> list[K]:
        """Orders whose expiry a live actor here is timing (the sweeper leaves them)."""
        return [key for key, actor in self._actors.items() if actor.keeps_expiry_timer]

    @property
    def live_count(self) -> int:
        return len(self._actors)

    @property
    def queued_count(self) -> int:
        return sum(actor.mailbox.qsize() for actor in self._actors.values())

    async def drain(self, timeout: float) -> None:
        """Refuse new commands, finish the queued ones, then stop every actor."""
        self.draining = True
        for actor in list(self._actors.values()):
            # Wakes an idle actor so it sees `draining`; a full one sees it when empty.
            with contextlib.suppress(asyncio.QueueFull):
                actor.mailbox.put_nowait(None)
        await self.scheduler.wait_and_close(timeout)


def _ignore_outcome(reply: asyncio.Future[object]) -> None:
    if not reply.cancelled():
        reply.exception()  # retrieved: a told command's failure is not "never retrieved"


# The order actors: keyed by order id.
OrderActor = Actor[int]
OrderSupervisor = Supervisor[int]
