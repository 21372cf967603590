"""Serving (server/entry/serving.py): a burst of new connections is taken in at once,
however busy the event loop is, instead of one per turn of the loop; and the garbage
collector is tuned for a server."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable

import uvloop
from aiohttp import web

from server.entry.serving import Listener, listening_socket, tune_garbage_collection

_BURST = 200


async def _turns_to_accept_a_burst(site: Callable[[web.AppRunner, socket.socket], web.BaseSite]) -> int:
    """How many turns of the event loop a burst of connections, all waiting in the
    kernel's accept queue, takes to reach the HTTP server (at most 2 x _BURST)."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    sock = listening_socket("127.0.0.1", 0, backlog=2 * _BURST, reuse_port=False)
    await site(runner, sock).start()
    # The kernel completes each handshake by itself: while this coroutine holds the
    # loop, the whole burst queues for accept().
    clients = [socket.create_connection(sock.getsockname()[:2]) for _ in range(_BURST)]
    try:
        assert runner.server is not None
        turns = 0
        while len(runner.server.connections) < _BURST and turns < 2 * _BURST:
            await asyncio.sleep(0)  # one turn of the loop
            turns += 1
        return turns
    finally:
        for client in clients:
            client.close()
        await runner.cleanup()  # (closes the connections it has, and the listening socket)


def test_a_burst_of_new_connections_is_taken_in_within_a_few_turns_of_the_loop() -> None:
    assert uvloop.run(_turns_to_accept_a_burst(Listener)) <= 10


def test_the_loops_own_server_takes_one_connection_per_turn_which_is_why_the_listener_exists() -> None:
    """libuv (under uvloop) accepts one connection per turn (libuv#3696): a burst
    waits behind every turn's work. Should this fail, libuv has changed, and the
    Listener may be unnecessary."""
    assert (
        uvloop.run(_turns_to_accept_a_burst(lambda runner, sock: web.SockSite(runner, sock, backlog=2 * _BURST)))
        >= _BURST
    )


def test_tuning_garbage_collection_freezes_what_exists_and_makes_young_collections_rarer() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collection()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
