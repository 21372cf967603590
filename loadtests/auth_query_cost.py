"""What the session check adds to the one token check's query, measured in
PostgreSQL alone: the query before sessions (user and token version) against the
current one (db/users.py `_GET`, which also joins the session), alternating blocks
on one connection so that the noise of a shared machine hits both alike.

    python3 dev.py tools python -m loadtests.auth_query_cost --pg-url postgresql://postgres@127.0.0.1:5432/postgres

Creates a scratch database (1,000 users with 3 sessions each) and drops it after.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from db import migrations
from db.users import _GET as CURRENT

BEFORE_SESSIONS = "SELECT id, email, name, role, created_at, updated_at, token_version FROM users WHERE id = $1"


async def _per_query_us(conn: asyncpg.Connection, query: str, args: Sequence[tuple[Any, ...]]) -> float:
    statement = await conn.prepare(query)
    started = time.perf_counter()
    for arg in args:
        await statement.fetchrow(*arg)
    return (time.perf_counter() - started) / len(args) * 1e6


async def main_async(pg_url: str, blocks: int, per_block: int) -> None:
    base = pg_url.rsplit("/", 1)[0]
    name = f"auth_query_cost_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = f"{base}/{name}"
        await migrations.apply_pending(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO users (email, name, password_hash) "
                "SELECT 'u' || i || '@example.com', 'U', 'x' FROM generate_series(1, 1000) AS i"
            )
            await conn.execute(
                "INSERT INTO sessions (user_id, token_version, expires_at) "
                "SELECT u.id, 0, now() + interval '30 days' FROM users u, generate_series(1, 3)"
            )
            await conn.execute("ANALYZE")
            pairs = await conn.fetch("SELECT user_id, id FROM sessions ORDER BY random() LIMIT $1", per_block)
            before_args = [(row["user_id"],) for row in pairs]
            current_args = [(row["user_id"], row["id"]) for row in pairs]
            before, current = [], []
            for _ in range(blocks):
                before.append(await _per_query_us(conn, BEFORE_SESSIONS, before_args))
                current.append(await _per_query_us(conn, CURRENT, current_args))
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    b, c = statistics.median(before), statistics.median(current)
    print(f"before sessions: median {b:.1f} us per query over {blocks} blocks of {per_block}")
    print(f"with sessions:   median {c:.1f} us per query")
    print(f"difference: {c - b:+.1f} us ({(c / b - 1) * 100:+.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.auth_query_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--per-block", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main_async(args.pg_url, args.blocks, args.per_block))


if __name__ == "__main__":
    main()
