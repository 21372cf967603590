"""Orders placed together: the batching half of the orders design.

Every order takes its products' row locks until it commits, so orders for one product
(a flash sale, a product drop) run one after another across the whole database
however many cores there are, and every order pays a transaction and a commit of its
own. A worker sees orders arrive together: while one placement runs for a key (a
stream of products, server/domain/orders.py), the orders that arrive for it wait
here, and when it is done they are placed as one batch, in arrival order, by one
statement in one transaction (db/orders.py `create_many`): one commit for all of
them, and per product one lock acquisition and one stock update; each order still
passes or fails every rule on its own, with the answer it would have had alone.

Nothing waits for a batch to fill: an order that finds its key idle is placed at
once, alone, exactly as without batching, so a quiet shop pays nothing. A batch runs
in a task of its own (an order's answer still means its reservation is committed;
a client that goes away cannot cancel the others' work), and a batch that fails for
a reason other than an outage is retried order by order, so that one bad order
cannot fail its neighbours. Waiting is bounded as the connection line bounds it
(DB_POOL_ACQUIRE_TIMEOUT): an order that waited longer gets 503 and is never placed;
and while the oldest order waiting for a key has waited DB_POOL_SHED_AFTER, new ones
for it are answered 503 at once (Overloaded), so that the queue holds a bounded wait
however many buyers arrive. Unlike the connection line, the queue sheds an order
whatever its request did before (its token check, say): placing the order is the
request's work, and every order for the key waits behind the queue.

Reads of products that missed the catalog cache are batched the same way
(server/domain/catalog.py `product_reads`): there an "order" is a product to read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from db.pool import Overloaded, is_outage, mark_work_started
from db.refusals import Refusal
from server.runtime.detached import Detached

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
Order = TypeVar("Order")  # an order to place
Answer = TypeVar("Answer")  # what placing it answers

# An order placed alone (with its key, as a batch is given it).
PlaceOne = Callable[[K, Order], Awaitable[Answer]]
# Orders of one key placed together: one answer per order, in order (the placed
# order, or the Refusal it met).
PlaceMany = Callable[[K, Sequence[Order]], Awaitable[Sequence[Answer | Refusal]]]


@dataclass(slots=True)
class _Waiting(Generic[Order, Answer]):
    order: Order
    reply: asyncio.Future[Answer]
    deadline: float


class Batches(Generic[K, Order, Answer]):
    """Per key (a stream of products), at most one placement running; what arrives
    meanwhile is placed together next, `max_batch` at a time."""

    def __init__(
        self,
        place_one: PlaceOne[K, Order, Answer],
        place_many: PlaceMany[K, Order, Answer],
        *,
        max_batch: int,
        timeout: float,
        shed_after: float = 0.0,
        observe: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._place_one = place_one
        self._observe = observe  # told each batch's size (of two or more)
        self._place_many = place_many
        self._max_batch = max_batch
        self._timeout = timeout
        self._shed_after = shed_after  # as the pool's line sheds (db/pool.py)
        # A key is here while a placement for it runs: with the orders waiting for the next.
        self._busy: dict[K, collections.deque[_Waiting[Order, Answer]]] = {}
        self._batches = Detached()

    @property
    def waiting_count(self) -> int:
        return sum(len(queue) for queue in self._busy.values())

    async def place(self, key: K, order: Order) -> Answer:
        queue = self._busy.get(key)
        if queue is None:
            self._busy[key] = collections.deque()
            try:
                return await self._place_one(key, order)
            finally:
                self._next(key)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._shed_after and self._waited_longest(queue, now) >= self._shed_after:
            raise Overloaded("too many orders are waiting to be placed")
        reply: asyncio.Future[Answer] = loop.create_future()
        queue.append(_Waiting(order, reply, now + self._timeout))
        return await reply

    def _waited_longest(self, queue: collections.deque[_Waiting[Order, Answer]], now: float) -> float:
        """How long the oldest order still waiting for the key has waited."""
        while queue and queue[0].reply.done():  # its request was cancelled
            queue.popleft()
        return now - (queue[0].deadline - self._timeout) if queue else 0.0

    def _next(self, key: K) -> None:
        """The placement for `key` is over: start the next batch, or free the key."""
        queue = self._busy[key]
        now = asyncio.get_running_loop().time()
        batch: list[_Waiting[Order, Answer]] = []
        while queue and len(batch) < self._max_batch:
            waiting = queue.popleft()
            if waiting.reply.done():  # its request was cancelled
                continue
            if waiting.deadline <= now:
                waiting.reply.set_exception(TimeoutError("the order waited too long to be placed"))
                continue
            batch.append(waiting)
        if not batch:
            del self._busy[key]
            return
        self._batches.start(self._run(key, batch))

    async def _run(self, key: K, batch: list[_Waiting[Order, Answer]]) -> None:
        mark_work_started()  # admitted work: these orders were taken in, not new arrivals
        try:
            if len(batch) == 1:
                await self._answer_alone(key, batch[0])
                return
            self._observe(len(batch))
            try:
                answers = await self._place_many(key, [waiting.order for waiting in batch])
            except Exception as exc:
                if is_outage(exc):
                    for waiting in batch:
                        _reply_error(waiting, exc)
                    return
                log.warning("a batch failed; answering its requests one by one", exc_info=exc)
                for waiting in batch:
                    await self._answer_alone(key, waiting)
                return
            for waiting, answer in zip(batch, answers, strict=True):
                if isinstance(answer, Refusal):
                    _reply_error(waiting, answer)
                elif not waiting.reply.done():
                    waiting.reply.set_result(answer)
        finally:
            self._next(key)

    async def _answer_alone(self, key: K, waiting: _Waiting[Order, Answer]) -> None:
        if waiting.reply.done():  # its request was cancelled while the batch ran
            return
        try:
            answer = await self._place_one(key, waiting.order)
        except Exception as exc:
            _reply_error(waiting, exc)
        else:
            if not waiting.reply.done():
                waiting.reply.set_result(answer)

    async def close(self) -> None:
        """Wait for the batches under way (at shutdown, before the pool closes)."""
        await self._batches.close()


def _reply_error(waiting: _Waiting[Order, Answer], exc: BaseException) -> None:
    if not waiting.reply.done():
        waiting.reply.set_exception(exc)
