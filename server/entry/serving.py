"""Serving one worker: the aiohttp runner, slow-client limits, graceful shutdown.

Requests the HTTP parser rejects before they reach the app (a malformed request
line, headers too long) are answered with problem documents too, by a request
handler whose `handle_error` builds them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web, web_protocol

from server.app import Options, create_app
from server.runtime.config import Config
from server.runtime.middleware import SERVER_NAME
from server.runtime.problems import problem, problem_response

log = logging.getLogger(__name__)

# Longest request line and header line accepted: long enough that an over-long id or
# query string reaches the app (and gets its 404/422), short enough to bound memory.
MAX_LINE_BYTES = 16_384


class _ProblemRequestHandler(web_protocol.RequestHandler):
    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("error handling request", exc_info=exc)
            detail = "an unexpected error occurred"
        else:
            log.debug("malformed request", extra={"status": status, "error": repr(exc)})
            detail = "the request is not valid HTTP or exceeds the header limits"
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        # Answered before the middleware could add its headers: the same ones here.
        response = problem_response(
            problem(status, detail), {"Server": SERVER_NAME, "X-Content-Type-Options": "nosniff"}
        )
        response.force_close()
        return response


class _ProblemServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _ProblemServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            **base._kwargs,
        )


def make_runner(app: web.Application, config: Config) -> Runner:
    return Runner(
        app,
        handle_signals=False,
        access_log=None,  # the middleware logs requests when ACCESS_LOG is on
        shutdown_timeout=config.shutdown_grace_seconds,
        keepalive_timeout=config.keepalive_timeout_seconds,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_LINE_BYTES,
    )


async def serve(config: Config, options: Options, *, reuse_port: bool = False) -> None:
    """Serve until SIGTERM, SIGINT or SIGHUP, then drain and return."""
    app = create_app(config, options)
    runner = make_runner(app, config)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_port=reuse_port, backlog=config.listen_backlog)
    await site.start()
    log.info("serving", extra={"host": config.host, "port": config.port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: closing the terminal that runs the service must stop it the same
    # way (its default action would end the process at once, leaving the embedded
    # PostgreSQL running).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    # Stops accepting, lets in-flight requests finish (up to the grace period), then
    # runs the cleanup context: periodic jobs, order actors, pool.
    await runner.cleanup()
    log.info("stopped")
