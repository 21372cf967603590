"""Per-order actors: the in-process half of the orders design.

Every command on an existing order (change its lines or status, delete it, pay it,
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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import aiojobs

from db.pool import is_outage, mark_work_started
from server.runtime.metrics import Metrics
from server.runtime.problems import ApiError, ServiceUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Command = Callable[["OrderActor"], Awaitable[T]]


@dataclass(slots=True)
class _Envelope:
    command: Command[Any]
    reply: asyncio.Future[Any]
    started: bool = False


class OrderActor:
    """One order's mailbox and the task that works through it."""

    __slots__ = ("_expiry_deadline", "_supervisor", "mailbox", "order_id")

    def __init__(self, order_id: int, supervisor: OrderSupervisor, mailbox: asyncio.Queue[_Envelope | None]) -> None:
        self.order_id = order_id
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
                    result = await envelope.command(self)
                except ApiError as exc:
                    _reply_error(envelope.reply, exc)
                except Exception as exc:
                    _reply_error(envelope.reply, exc)
                    if not is_outage(exc):
                        raise
                else:
                    if not envelope.reply.done():
                        envelope.reply.set_result(result)
        except Exception:
            log.exception("order actor crashed", extra={"order_id": self.order_id})
            supervisor.metrics.actor_crashes.inc()
        finally:
            supervisor._retire(self)

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
        try:
            await self._supervisor.expire(self.order_id)
        except Exception:
            log.warning(
                "actor could not expire its order; the sweeper will", exc_info=True, extra={"order_id": self.order_id}
            )


def _reply_error(reply: asyncio.Future[Any], exc: BaseException) -> None:
    if not reply.done():
        reply.set_exception(exc)


@dataclass
class OrderSupervisor:
    scheduler: aiojobs.Scheduler
    metrics: Metrics
    expire: Callable[[int], Awaitable[object]]
    max_live: int
    mailbox_size: int
    idle_seconds: float
    queue_timeout: float = 5.0
    wall_clock: Callable[[], float] = time.time
    draining: bool = False
    _actors: dict[int, OrderActor] = field(default_factory=dict)
    _restarts: set[asyncio.Task[object]] = field(default_factory=set)

    async def ask(self, order_id: int, command: Command[T]) -> T:
        """Run `command` in the order's actor, after the commands queued before it."""
        if self.draining:
            raise ServiceUnavailable("the service is shutting down", retry_after=2)
        actor = self._actors.get(order_id)
        if actor is None:
            if len(self._actors) >= self.max_live:
                self.metrics.mailbox_rejections.labels("actors").inc()
                raise ServiceUnavailable("too many orders are being worked on; retry shortly")
            actor = await self._start(order_id, asyncio.Queue(self.mailbox_size))
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[T] = loop.create_future()
        envelope = _Envelope(command, reply)
        try:
            actor.mailbox.put_nowait(envelope)
        except asyncio.QueueFull:
            self.metrics.mailbox_rejections.labels("mailbox").inc()
            raise ServiceUnavailable("too many requests queued for this order; retry shortly") from None
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
            envelope.reply.set_exception(ServiceUnavailable("the order is busy; retry shortly"))

    async def _start(self, order_id: int, mailbox: asyncio.Queue[_Envelope | None]) -> OrderActor:
        actor = OrderActor(order_id, self, mailbox)
        # Registered before spawn: the scheduler has no limit, so spawn never waits and
        # no other command can slip in between.
        self._actors[order_id] = actor
        await self.scheduler.spawn(actor.run(), name=f"order-{order_id}")
        return actor

    def _retire(self, actor: OrderActor) -> None:
        if self._actors.get(actor.order_id) is actor:
            del self._actors[actor.order_id]
        if not actor.mailbox.empty() and not self.scheduler.closed:
            # A crash left commands behind: hand them to a fresh actor.
            replacement = OrderActor(actor.order_id, self, actor.mailbox)
            self._actors[actor.order_id] = replacement
            task = asyncio.get_running_loop().create_task(self.scheduler.spawn(replacement.run()))
            self._restarts.add(task)
            task.add_done_callback(self._restarts.discard)

    def live_order_ids(self) -> list[int]:
        """Orders whose expiry a live actor here is timing (the sweeper leaves them)."""
        return [order_id for order_id, actor in self._actors.items() if actor.keeps_expiry_timer]

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
