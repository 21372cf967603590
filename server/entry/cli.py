"""`python -m server [command]`: serve (the default), migrate, create-admin,
seed-demo, check-invariants."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import uvloop

from db import migrations
from db import users as users_db
from db.pool import PoolSettings, create_database
from server.domain import invariants
from server.runtime import logs
from server.runtime.config import Config, ConfigError, load, pool_settings
from server.runtime.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError

log = logging.getLogger("storefront")


@contextlib.contextmanager
def database(config: Config) -> Iterator[str]:
    """The DSN to use: DATABASE_URL, or the embedded PostgreSQL (started if needed
    and stopped afterwards if this process started it)."""
    if config.database_url:
        yield config.database_url
        return
    embedded = EmbeddedPostgres(Path(config.embedded_pg_dir))
    dsn = embedded.start()
    try:
        yield dsn
    finally:
        embedded.stop()


def _serve(config: Config, args: argparse.Namespace) -> int:
    from server.entry import processes

    with database(config) as dsn:
        uvloop.run(migrations.apply_pending(dsn))
        return processes.run(config, dsn)


def _worker(config: Config, args: argparse.Namespace) -> int:
    from server.entry import processes

    assert config.database_url, "workers are started with DATABASE_URL set"
    return processes.run_worker(config, config.database_url)


def _migrate(config: Config, args: argparse.Namespace) -> int:
    with database(config) as dsn:
        applied = uvloop.run(migrations.apply_pending(dsn))
    print(f"applied: {', '.join(applied) or 'nothing pending'}")
    return 0


def _create_admin(config: Config, args: argparse.Namespace) -> int:
    from server.domain.auth import Passwords

    password = args.password or os.environ.get("ADMIN_PASSWORD") or getpass.getpass("password: ")
    if not 8 <= len(password) <= 128:
        print("the password must have 8 to 128 characters", file=sys.stderr)
        return 2

    async def create(dsn: str) -> int:
        passwords = Passwords(
            config.password_hash_time_cost, config.password_hash_memory_kib, config.password_hash_parallelism
        )
        db = await create_database(_small_pool(config, dsn))
        try:
            password_hash = await passwords.hash(password)
            return await users_db.upsert_admin(
                db, args.email.strip().lower(), args.name, password_hash, replace_password=True
            )
        finally:
            await db.close(timeout=5)
            passwords.close()

    with database(config) as dsn:
        uvloop.run(migrations.apply_pending(dsn))
        user_id = uvloop.run(create(dsn))
    print(f"admin {args.email} ready (user id {user_id})")
    return 0


def _seed_demo(config: Config, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from db.products import seed as copy_products
    from server.runtime import seed

    async def load_products(dsn: str) -> float:
        conn = await asyncpg.connect(dsn)
        started = time.perf_counter()
        try:
            rows = seed.products(args.products, seed=args.seed)
            with tqdm(total=args.products, unit="products", disable=args.quiet) as progress:
                while batch := list(itertools.islice(rows, args.batch)):
                    await copy_products(conn, batch, seed.COLUMNS)
                    progress.update(len(batch))
            await conn.execute("ANALYZE products")
        finally:
            await conn.close()
        return time.perf_counter() - started

    with database(config) as dsn:
        uvloop.run(migrations.apply_pending(dsn))
        elapsed = uvloop.run(load_products(dsn))
    print(f"seeded {args.products} products in {elapsed:.1f} s")
    return 0


def _check_invariants(config: Config, args: argparse.Namespace) -> int:
    async def check(dsn: str) -> list[str]:
        db = await create_database(_small_pool(config, dsn))
        try:
            return await invariants.violations(db, settled=args.settled)
        finally:
            await db.close(timeout=5)

    with database(config) as dsn:
        problems = uvloop.run(check(dsn))
    for problem in problems:
        print(problem)
    print(f"{len(problems)} invariant violation(s)")
    return 1 if problems else 0


def _small_pool(config: Config, dsn: str) -> PoolSettings:
    """For one-off commands: two connections, and time for long statements."""
    return dataclasses.replace(
        pool_settings(config, dsn), min_size=1, max_size=2, acquire_timeout=30.0, command_timeout=600.0
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m server",
        description="The storefront API. Settings come from the environment (see README).",
    )
    commands = root.add_subparsers(dest="command", metavar="command")
    commands.add_parser("serve", help="serve the API (the default): migrate, then run WORKERS processes")
    commands.add_parser("worker")  # internal: started by `serve` with WORKERS > 1
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    admin = commands.add_parser("create-admin", help="create an admin, or promote a user and reset its password")
    admin.add_argument("--email", required=True)
    admin.add_argument("--name", default="Administrator")
    admin.add_argument("--password", help="default: ADMIN_PASSWORD, else asked for")
    seed_demo = commands.add_parser("seed-demo", help="fill the catalog with fake products (COPY)")
    seed_demo.add_argument("--products", type=int, required=True, help="how many products to add")
    seed_demo.add_argument("--batch", type=int, default=50_000, help="rows per COPY (default 50000)")
    seed_demo.add_argument("--seed", type=int, default=None, help="random seed, for repeatable data")
    seed_demo.add_argument("--quiet", action="store_true", help="no progress bar")
    check = commands.add_parser(
        "check-invariants", help="check the stock, charge and refund invariants; exit 1 on any violation"
    )
    check.add_argument(
        "--settled",
        action="store_true",
        help="also require no payment or refund pending and no order pending long past its expiry",
    )
    return root


_COMMANDS = {
    None: _serve,
    "serve": _serve,
    "worker": _worker,
    "migrate": _migrate,
    "create-admin": _create_admin,
    "seed-demo": _seed_demo,
    "check-invariants": _check_invariants,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = load()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.access_log)
    try:
        return _COMMANDS[args.command](config, args)
    except EmbeddedPostgresError as exc:
        print(f"embedded PostgreSQL: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return 1
