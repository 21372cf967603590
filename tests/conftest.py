"""Test fixtures: a real PostgreSQL, a fresh database per run, the app per test.

The server is the one named by TEST_DATABASE_URL (any database on it; the tests
create their own next to it and drop it at the end), or else a throwaway embedded
PostgreSQL in a temporary folder. A server nobody named is never touched.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from db import migrations
from server.app import Options, create_app
from server.runtime.config import Config, load
from server.runtime.embedded_pg import EmbeddedPostgres
from tests.helpers import Api, ServerProcess, dsn_with_database, run_sql, session

JWT_SECRET = "test-secret-" + "x" * 32
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"
# Cheap hashing: the tests check behaviour, not argon2's cost.
FAST_HASHING = {"password_hash_time_cost": 1, "password_hash_memory_kib": 1024, "password_hash_parallelism": 1}
# Every table but the migrations' own record: a table a migration adds is emptied too.
_TABLES = """
SELECT string_agg(format('%I', tablename), ', ') FROM pg_tables
WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
"""


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a PostgreSQL server (any database on it)."""
    named = os.environ.get("TEST_DATABASE_URL")
    if named:
        yield named
        return
    folder = Path(tempfile.mkdtemp(prefix="storefront-test-pg-"))
    embedded = EmbeddedPostgres(folder / "data")
    try:
        yield embedded.start()
    finally:
        embedded.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_server: str) -> Iterator[str]:
    """A fresh database for this test run, migrated; dropped at the end."""
    name = f"storefront_test_{os.getpid()}_{secrets.token_hex(3)}"
    run_sql(pg_server, f'CREATE DATABASE "{name}"')
    dsn = dsn_with_database(pg_server, name)
    try:
        asyncio.run(migrations.apply_pending(dsn))
        yield dsn
    finally:
        run_sql(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def clean_db(database_url: str) -> str:
    """Every test starts from empty tables (so tests do not depend on each other)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"TRUNCATE {await conn.fetchval(_TABLES)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    return database_url


def make_config(database_url: str, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "database_url": database_url,
        "jwt_secret": JWT_SECRET,
        "admin_email": ADMIN_EMAIL,
        "admin_password": ADMIN_PASSWORD,
        "db_pool_min_size": 1,
        "db_pool_max_size": 5,
        "order_sweep_interval_seconds": 0.5,
        "payment_reconcile_interval_seconds": 0.5,
        **FAST_HASHING,
    }
    settings.update(overrides)
    return load(environ={}, **settings)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a test module (or with indirect parametrization) to change settings."""
    return {}


@pytest.fixture
def config(clean_db: str, config_overrides: dict[str, Any]) -> Config:
    return make_config(clean_db, **config_overrides)


@pytest.fixture
def app(config: Config) -> web.Application:
    return create_app(config, Options(dsn=config.database_url or "", jwt_secret=JWT_SECRET))


@pytest.fixture
async def client(aiohttp_client: Any, app: web.Application) -> TestClient[Any, Any]:
    test_client: TestClient[Any, Any] = await aiohttp_client(app)
    return test_client


@pytest.fixture
def api(client: TestClient[Any, Any]) -> Api:
    return Api(client)


@pytest.fixture
async def db(clean_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, to look at (or tamper with) what the service stored."""
    conn = await asyncpg.connect(clean_db)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def two_servers(clean_db: str) -> Iterator[list[ServerProcess]]:
    """Two real server processes on one database, with provider calls slow enough
    (200 ms) that simultaneous requests overlap."""
    env = {"PAYMENT_PROVIDER_LATENCY_MS": "200", "ACTOR_MAILBOX_SIZE": "64"}
    servers = [ServerProcess(clean_db, env=env).start() for _ in range(2)]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
async def apis(two_servers: list[ServerProcess]) -> AsyncIterator[list[Api]]:
    sessions = [session(s.url, connector=aiohttp.TCPConnector(limit=100)) for s in two_servers]
    try:
        yield [Api(http) for http in sessions]
    finally:
        for http in sessions:
            await http.close()
