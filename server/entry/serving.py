"""Serving one worker: the aiohttp runner, slow-client limits, graceful shutdown.

Requests the HTTP parser rejects before they reach the app (a malformed request
line, headers too long) are answered with problem documents too, by a request
handler whose `handle_error` builds them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
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


# Connections accepted per readiness of the listening socket. libuv (under uvloop)
# accepts one per event-loop iteration (libuv#3696); with a thousand busy
# connections an iteration takes tens of milliseconds, so a burst of new connections
# queued for seconds in the kernel while the old ones were served (product_get at 1,024
# connections: p99 7 s, some requests waiting the whole run). A bound, so that a flood
# of connections cannot hold the loop for long.
_ACCEPTS_PER_WAKEUP = 1024
# After running out of file descriptors, how long before accepting again (asyncio's
# own loop waits the same; level-triggered readiness would otherwise spin).
_ACCEPT_RETRY_SECONDS = 1.0


class Listener(web.BaseSite):
    """The listening socket, with new connections accepted by this process in
    bursts (up to _ACCEPTS_PER_WAKEUP) and handed to the runner's HTTP server as
    asyncio's `connect_accepted_socket` does, instead of by the loop's own server."""

    __slots__ = ("_connecting", "_sock")

    def __init__(self, runner: web.BaseRunner, sock: socket.socket) -> None:
        super().__init__(runner)
        self._sock = sock
        self._connecting: set[asyncio.Task[Any]] = set()

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # out of descriptors or memory: pause, keep serving
                log.warning("accepting connections paused", extra={"error": repr(exc)})
                loop.remove_reader(self._sock.fileno())
                loop.call_later(_ACCEPT_RETRY_SECONDS, self._resume)
                return
            task = loop.create_task(loop.connect_accepted_socket(server, conn))
            self._connecting.add(task)
            task.add_done_callback(self._connected)

    def _resume(self) -> None:
        if self._sock.fileno() != -1:  # not stopped meanwhile
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._connecting.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("an accepted connection could not be set up", extra={"error": repr(exc)})

    async def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        await super().stop()


def listening_sockets(host: str, port: int, *, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Bound, listening sockets on every address `host` resolves to (as the loop's own
    server binds them: `localhost` on IPv4 and IPv6, an IPv6 socket for IPv6 only)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = dict.fromkeys((family, address) for family, _, _, _, address in found)
    return [
        socket.create_server(address, family=family, backlog=backlog, reuse_port=reuse_port)
        for family, address in addresses
    ]


# The cyclic garbage collector, tuned for a server's heap: a young collection after
# 50,000 net new container objects instead of 700 (one request makes dozens, so the
# default ran one every few requests, and with 1,024 open connections each older
# collection walked all their objects), and what start-up made (modules, the app, the
# settings) frozen out of every collection. Measured in docs/performance.md: at 1,024
# connections product_get 1.27x, order_create served 2.6x with 1/100 of the 503s; at
# 64, product_get 1.08x and profile_get 1.20x. Cycles are still collected, in larger
# and rarer batches.
_GC_THRESHOLDS = (50_000, 20, 10)


def tune_garbage_collection() -> None:
    """Once the app has started: what exists now lives as long as the process."""
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


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
    for sock in listening_sockets(config.host, config.port, backlog=config.listen_backlog, reuse_port=reuse_port):
        await Listener(runner, sock).start()
    tune_garbage_collection()
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
