"""A real webhook receiver for tests: an aiohttp server on 127.0.0.1 that records
what it gets and answers as the test tells it (per request)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> Any:
        return orjson.loads(self.body)

    def verified(self, secret: str) -> Any:
        """The event, checked as a receiver would with the Standard Webhooks library
        (raises WebhookVerificationError on a bad signature)."""
        return Webhook(secret).verify(self.body, self.headers)


Answer = Callable[[Received], Awaitable[web.StreamResponse]]


async def accept(_: Received) -> web.StreamResponse:
    return web.Response(status=204)


@dataclass
class Receiver:
    port: int = 0
    answer: Answer = accept
    received: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        # (An asyncio.Server, or uvloop's of the same shape: typed as neither's base.)
        server = cast("asyncio.Server", site._server)
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(request.path, dict(request.headers), await request.read())
        self.received.append(got)
        return await self.answer(got)

    def events(self, path: str = "/hook") -> list[Any]:
        return [r.event for r in self.received if r.path == path]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        # Generous: a transaction left open anywhere on a shared PostgreSQL server holds
        # the outbox back (README, "Events and webhooks"), and CI machines are busy.
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: condition not met in {timeout} s; got {self.events()}")
            await asyncio.sleep(0.05)
