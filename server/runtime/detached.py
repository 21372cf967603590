"""Work that requests hand over and no request owns: a batch made of several requests'
statements (order placements, catalog reads, token checks). It runs in a task of its
own, so a client that goes away cannot cancel the others' answers, and is waited for
at shutdown, before the pool it uses closes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Coroutine
from typing import Any


class Detached:
    """The tasks of one batching mechanism: started outside any request's context, and
    waited for by `close`."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> None:
        # A context of its own: the work is nobody's request. Its log lines must not
        # carry the id of the request that happened to start it, and whether its
        # statements are work already started (db/pool.py's lanes) is its own to say.
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def close(self) -> None:
        """Wait for the work under way (what failed has answered its requests)."""
        while self._running:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._running)
