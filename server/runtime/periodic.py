"""Periodic jobs of a worker: expiry sweep, payment reconciliation, purges, gauges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from db.pool import is_outage, mark_work_started

log = logging.getLogger(__name__)


class Periodic:
    """Runs jobs every N seconds until stopped, and sooner for a job whose `wake`
    event is set (the runs of one job never overlap: wakes during a run make one more
    run after it). A failing run is logged and the job carries on at its next turn (a
    database outage is expected now and then)."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def every(
        self,
        seconds: float,
        job: Callable[[], Awaitable[object]],
        *,
        name: str,
        at_start: bool = False,
        wake: asyncio.Event | None = None,
    ) -> None:
        self._tasks.append(asyncio.create_task(self._loop(seconds, job, name, at_start, wake), name=name))

    async def _loop(
        self,
        seconds: float,
        job: Callable[[], Awaitable[object]],
        name: str,
        at_start: bool,
        wake: asyncio.Event | None,
    ) -> None:
        mark_work_started()  # the worker's own upkeep, never shed as a new request is
        # A random phase keeps the workers and replicas from all running a job at once.
        await asyncio.sleep(0 if at_start else random.uniform(0, seconds))
        while True:
            if wake is not None:
                wake.clear()
            try:
                await job()
            except Exception as exc:
                if is_outage(exc):
                    log.warning("periodic job skipped: database unavailable", extra={"job": name})
                else:
                    log.exception("periodic job failed", extra={"job": name})
            if wake is None:
                await asyncio.sleep(seconds)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        await wake.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
