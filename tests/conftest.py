"""Test fixtures: a real PostgreSQL, a fresh database per run, the app per test.

The server is the one named by TEST_DATABASE_URL (any database on it; the tests
create their own next to it and drop it at the end), or else a throwaway embedded
PostgreSQL in a temporary folder. A server nobody named is never touched.

With STOREFRONT_URL (and STOREFRONT_DATABASE_URL, that service's database) the same HTTP
tests drive a running deployment instead of the in-process app, e.g. scripts/stack.sh's
nginx: `api` and `client` talk to that URL, and `clean_db` and `db` use that database.
Tests that need settings of their own (`config_overrides`) or reach into the in-process
app are skipped there: the deployment has its own settings.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from db import migrations
from db import users as users_db
from db.pool import Database
from server.app import Options, create_app
from server.runtime.config import Config, load
from server.runtime.embedded_pg import EmbeddedPostgres
from tests.helpers import Api, ServerProcess, dsn_with_database, run_sql, session
from tests.stripe_standin import Gateway, StandIn, standin_path

JWT_SECRET = "test-secret-" + "x" * 32
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-1"
# Cheap hashing: the tests check behaviour, not argon2's cost.
FAST_HASHING = {"password_hash_time_cost": 1, "password_hash_memory_kib": 1024, "password_hash_parallelism": 1}
STOREFRONT_URL = os.environ.get("STOREFRONT_URL")
# Every table but the schema's own records: a table a migration adds is emptied too.
_TABLES = """
SELECT string_agg(format('%I', tablename), ', ') FROM pg_tables
WHERE schemaname = 'public' AND tablename NOT IN ('schema_migrations', 'schema_functions')
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
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for this test run, migrated; dropped at the end."""
    if STOREFRONT_URL:
        external = os.environ.get("STOREFRONT_DATABASE_URL")
        if not external:
            pytest.exit("STOREFRONT_URL needs STOREFRONT_DATABASE_URL (the database that service uses)", 2)
        yield external
        return
    pg_server: str = request.getfixturevalue("pg_server")
    name = f"storefront_test_{os.getpid()}_{secrets.token_hex(3)}"
    run_sql(pg_server, f'CREATE DATABASE "{name}"')
    dsn = dsn_with_database(pg_server, name)
    try:
        asyncio.run(migrations.apply_pending(dsn))
        yield dsn
    finally:
        run_sql(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database(pg_server: str) -> Iterator[str]:
    """A new database with nothing in it, dropped afterwards."""
    name = f"storefront_empty_{secrets.token_hex(4)}"
    run_sql(pg_server, f'CREATE DATABASE "{name}"')
    try:
        yield dsn_with_database(pg_server, name)
    finally:
        run_sql(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def clean_db(database_url: str) -> str:
    """Every test starts from empty tables (so tests do not depend on each other)."""
    if STOREFRONT_URL:
        await _clean_external(database_url)
        return database_url
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"TRUNCATE {await conn.fetchval(_TABLES)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    return database_url


async def _clean_external(database_url: str) -> None:
    """Empty a running deployment's tables. Ids are not restarted, so an id a running
    process still remembers (an order actor, say) never names a new row; the admin the
    deployment made at its start is made again."""
    db = Database(await asyncpg.create_pool(database_url, min_size=1, max_size=1, statement_cache_size=0), 10)
    try:
        await db.execute(f"TRUNCATE {await db.fetchval(_TABLES)} CASCADE")
        hasher = PasswordHasher(
            time_cost=FAST_HASHING["password_hash_time_cost"],
            memory_cost=FAST_HASHING["password_hash_memory_kib"],
            parallelism=FAST_HASHING["password_hash_parallelism"],
        )
        await users_db.upsert_admin(db, ADMIN_EMAIL, "Administrator", hasher.hash(ADMIN_PASSWORD), True)
    finally:
        await db.close(10)


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
        # No shedding but where a test asks for it (tests/test_pool.py): on a busy CI
        # machine a burst of a test's requests may wait past DB_POOL_SHED_AFTER.
        "db_pool_shed_after": 0.0,
        **FAST_HASHING,
    }
    settings.update(overrides)
    return load(environ={}, **settings)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a test module (or with indirect parametrization) to change settings."""
    return {}


@pytest.fixture(scope="session")
def stripe_standin() -> Iterator[StandIn]:
    """Stripe's stand-in, one real HTTP server for the whole run."""
    path = standin_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("the Stripe stand-in (shared/stripe-standin/standin.py) is not beside the checkout")
        pytest.skip("the Stripe stand-in (shared/stripe-standin/standin.py) is not beside the checkout")
    standin = StandIn(path).start()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def payment_provider() -> str:
    """The payment provider of the app and the servers: "simulated", or "stripe" (the
    stand-in). A module whose tests run with both overrides it, parametrized."""
    return "simulated"


@pytest.fixture
def gateway(request: pytest.FixtureRequest, payment_provider: str) -> Gateway:
    if payment_provider == "simulated":
        return Gateway("simulated")
    if STOREFRONT_URL:
        pytest.skip("pays through Stripe's stand-in; STOREFRONT_URL has its own provider")
    standin: StandIn = request.getfixturevalue("stripe_standin")
    standin.reset()
    return Gateway("stripe", standin)


@pytest.fixture
def config(clean_db: str, config_overrides: dict[str, Any], gateway: Gateway) -> Config:
    return make_config(clean_db, **config_overrides, **gateway.settings(config_overrides))


@pytest.fixture
def app(config: Config) -> web.Application:
    if STOREFRONT_URL:
        pytest.skip("reaches into the in-process app; STOREFRONT_URL names a running deployment")
    return create_app(config, Options(dsn=config.database_url or "", jwt_secret=JWT_SECRET))


@pytest.fixture
async def client(
    request: pytest.FixtureRequest,
    aiohttp_client: Any,
    clean_db: str,
    config_overrides: dict[str, Any],
    gateway: Gateway,
) -> AsyncIterator[TestClient[Any, Any] | aiohttp.ClientSession]:
    if not STOREFRONT_URL:
        test_client = await aiohttp_client(request.getfixturevalue("app"))
        gateway.send_events_to(str(test_client.make_url("/")))
        yield test_client
        return
    if config_overrides:
        pytest.skip(f"needs settings of its own ({config_overrides}); STOREFRONT_URL has its own")
    async with aiohttp.ClientSession(base_url=STOREFRONT_URL) as http:
        yield http


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


# --- real server processes (`python -m server`) -------------------------------------------


@pytest.fixture(scope="module")
def live_server(database_url: str) -> Iterator[ServerProcess]:
    """One server process for a whole module (on the run's database): for what only a
    real process does (the HTTP parser's limits, a model run over real HTTP)."""
    server = ServerProcess(database_url)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def server_env() -> dict[str, str]:
    """Settings of the `two_servers`: override in a test module."""
    return {}


@pytest.fixture
def server_database(clean_db: str) -> str:
    """The database of the `two_servers`: override in a test module."""
    return clean_db


@pytest.fixture
def two_servers(
    server_database: str, server_env: dict[str, str], gateway: Gateway, tmp_path: Path
) -> Iterator[list[ServerProcess]]:
    """Two server processes on one database, started at the same moment (their logs:
    tmp_path/server0.log, server1.log): for what must hold across processes. With
    Stripe, its events go to the first."""
    env = {**server_env, **gateway.env(server_env)}
    servers = [ServerProcess(server_database, env=env, log_path=tmp_path / f"server{i}.log") for i in range(2)]
    gateway.send_events_to(servers[0].url)
    try:
        with ThreadPoolExecutor(len(servers)) as starting:
            for started in [starting.submit(server.start) for server in servers]:
                started.result()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
async def apis(two_servers: list[ServerProcess]) -> AsyncIterator[list[Api]]:
    """A client of each of the `two_servers`, each allowed 100 connections at once."""
    sessions = [session(s.url, connector=aiohttp.TCPConnector(limit=100)) for s in two_servers]
    try:
        yield [Api(http) for http in sessions]
    finally:
        for http in sessions:
            await http.close()
