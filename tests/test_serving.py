"""Serving (server/entry/serving.py): a burst of new connections is taken in at once,
however busy the event loop is, instead of one per turn of the loop; and the garbage
collector is tuned for a server."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import socket
from collections.abc import Callable

import uvloop
from aiohttp import web

from server.entry.serving import Listener, listening_sockets, tune_garbage_collection

_BURST = 200


async def _turns_to_accept_a_burst(site: Callable[[web.AppRunner, socket.socket], web.BaseSite]) -> int:
    """How many turns of the event loop a burst of connections, all waiting in the
    kernel's accept queue, takes to reach the HTTP server (at most 2 x _BURST)."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    (sock,) = listening_sockets("127.0.0.1", 0, backlog=2 * _BURST, reuse_port=False)
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


def test_out_of_descriptors_the_listener_pauses_and_then_takes_in_the_connections_that_waited() -> None:
    async def scenario() -> tuple[int, int]:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        (sock,) = listening_sockets("127.0.0.1", 0, backlog=64, reuse_port=False)
        await Listener(runner, sock).start()
        clients = [socket.create_connection(sock.getsockname()[:2]) for _ in range(20)]
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Room for a few more descriptors only: accept() fails with EMFILE after them.
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 3, limits[1]))
        try:
            assert runner.server is not None
            for _ in range(20):
                await asyncio.sleep(0)
            while_out = len(runner.server.connections)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        try:
            for _ in range(600):  # the listener resumes by itself (after a second)
                if len(runner.server.connections) == len(clients):
                    break
                await asyncio.sleep(0.05)
            return while_out, len(runner.server.connections)
        finally:
            for client in clients:
                client.close()
            await runner.cleanup()

    while_out, after = uvloop.run(scenario())
    assert while_out < 20
    assert after == 20


def test_a_name_is_listened_on_at_every_address_it_resolves_to() -> None:
    sockets = listening_sockets("localhost", 0, backlog=8, reuse_port=False)
    try:
        resolved = {family for family, *_ in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
        assert {sock.family for sock in sockets} == resolved
    finally:
        for sock in sockets:
            sock.close()


def test_tuning_garbage_collection_freezes_what_exists_and_makes_young_collections_rarer() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collection()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
