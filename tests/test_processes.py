"""Real `python -m server` processes: concurrent start-up, graceful shutdown, and
the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from db.migrations import discover
from server.runtime.ports import free_port
from tests.helpers import ROOT, Api, ServerProcess, session


@pytest.fixture
def server_database(empty_database: str) -> str:
    return empty_database


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"LOG_LEVEL": "INFO"}  # "migration applied" is logged at INFO


async def test_two_processes_starting_together_on_an_empty_database_both_serve(
    two_servers: list[ServerProcess], empty_database: str, tmp_path: Path
) -> None:
    for server in two_servers:
        async with session(server.url) as http:
            assert (await Api(http).register()).status == 201
    conn = await asyncpg.connect(empty_database)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    assert sorted(versions) == [m.version for m in discover()]
    applied = sum(p.read_text().count('"migration applied"') for p in tmp_path.glob("server*.log"))
    assert applied == len(versions)  # each migration applied by exactly one of them


async def test_sigterm_lets_in_flight_requests_finish_and_exits_0(clean_db: str) -> None:
    server = ServerProcess(clean_db, env={"PAYMENT_PROVIDER_LATENCY_MS": "1500"}).start()
    try:
        async with session(server.url) as http:
            api = Api(http)
            user = await api.customer()
            product = await api.product(stock=5)
            order = (await api.order(user, (product["id"], 1))).json
            payment = asyncio.create_task(api.pay(user, order["id"]))
            await asyncio.sleep(0.4)  # the provider call is in flight
            # A second command for the same order waits in the actor's mailbox.
            queued = asyncio.create_task(api.call("DELETE", f"/api/orders/{order['id']}", token=user.token))
            await asyncio.sleep(0.2)
            server.signal(signal.SIGTERM)
            paid, deleted = await payment, await queued
        assert paid.status == 201, paid
        assert deleted.status == 409, deleted  # it ran after the payment: paid orders stay
        assert await asyncio.to_thread(server.wait) == 0
    finally:
        server.stop()


async def test_after_sigterm_new_connections_are_refused(clean_db: str) -> None:
    server = ServerProcess(clean_db).start()
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait) == 0
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


@pytest.fixture
async def embedded_server(tmp_path: Path) -> AsyncIterator[tuple[dict[str, str], Path]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "TEST_DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR"}
    }
    env.update(
        {
            "EMBEDDED_PG_DIR": str(tmp_path / "pgdata"),
            "PORT": str(free_port()),
            "WORKERS": "1",
            "JWT_SECRET": "embedded-test-secret-" + "z" * 20,
            "PASSWORD_HASH_MEMORY_KIB": "1024",
            "PASSWORD_HASH_TIME_COST": "1",
            "PASSWORD_HASH_PARALLELISM": "1",
        }
    )
    yield env, tmp_path / "pgdata"


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def _wait_ready(url: str) -> None:
    for _ in range(300):
        try:
            async with session(url) as http, http.get("/readyz") as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the server did not become ready")


async def test_without_database_url_an_embedded_postgresql_keeps_data_across_restarts(
    embedded_server: tuple[dict[str, str], Path],
) -> None:
    env, data_dir = embedded_server
    url = f"http://127.0.0.1:{env['PORT']}"
    first = _start(env)
    try:
        await _wait_ready(url)
        async with session(url) as http:
            assert (await Api(http).register("kept@example.com", "password-123")).status == 201
    finally:
        first.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait, 60) == 0
    assert (data_dir / "PG_VERSION").exists()
    assert not (data_dir / "postmaster.pid").exists()  # stopped cleanly with the service

    second = _start(env)
    try:
        await _wait_ready(url)
        async with session(url) as http:
            assert (await Api(http).login("kept@example.com", "password-123")).status == 200
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 60) == 0
