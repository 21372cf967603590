"""Periodic jobs of a worker: expiry sweep, payment reconciliation, purges, gauges."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from db.pool import is_outage

log = logging.getLogger(__name__)


class Periodic:
    """Runs jobs every N seconds until stopped. A failing run is logged and the job
    carries on at its next turn (a database outage is expected now and then)."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def every(self, seconds: float, job: Callable[[], Awaitable[object]], *, name: str, at_start: bool = False) -> None:
        self._tasks.append(asyncio.create_task(self._loop(seconds, job, name, at_start), name=name))

    async def _loop(self, seconds: float, job: Callable[[], Awaitable[object]], name: str, at_start: bool) -> None:
        # A random phase keeps the workers and replicas from all running a job at once.
        await asyncio.sleep(0 if at_start else random.uniform(0, seconds))
        while True:
            try:
                await job()
            except Exception as exc:
                if is_outage(exc):
                    log.warning("periodic job skipped: database unavailable", extra={"job": name})
                else:
                    log.exception("periodic job failed", extra={"job": name})
            await asyncio.sleep(seconds)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
