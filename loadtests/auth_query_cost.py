"""What a token check costs, measured on PostgreSQL alone: the query before sessions
(user and token version) against the current ones, which also read the session:
db/users.py `_GET` (one check), and `_GET_MANY` with one pair and with --batch pairs
(a worker's checks arriving together), per check; alternating blocks on one
connection so that the noise of a shared machine hits each alike.

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
from db.users import _GET, _GET_MANY

BEFORE_SESSIONS = "SELECT id, email, name, role, created_at, updated_at, token_version FROM users WHERE id = $1"


async def _per_check_us(conn: asyncpg.Connection, query: str, args: Sequence[tuple[Any, ...]], checks: int) -> float:
    """Microseconds per token check: `args` are the statements' arguments, making `checks` checks in all."""
    statement = await conn.prepare(query)
    started = time.perf_counter()
    for arg in args:
        await statement.fetch(*arg)
    return (time.perf_counter() - started) / checks * 1e6


def _statements(pairs: Sequence[tuple[int, int]], batch: int) -> list[tuple[list[int], list[int]]]:
    """The current statement's arguments for these (user, session) pairs, `batch` at a time."""
    chunks = [pairs[i : i + batch] for i in range(0, len(pairs), batch)]
    return [([user for user, _ in chunk], [session for _, session in chunk]) for chunk in chunks]


async def main_async(pg_url: str, blocks: int, per_block: int, batch: int) -> None:
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
            current = [(row["user_id"], row["id"]) for row in pairs]
            statements: dict[str, tuple[str, Sequence[tuple[Any, ...]]]] = {
                "before sessions": (BEFORE_SESSIONS, before_args),
                "get": (_GET, current),
                "get_many, one pair": (_GET_MANY, _statements(current, 1)),
                f"get_many, {batch} pairs": (_GET_MANY, _statements(current, batch)),
            }
            timings: dict[str, list[float]] = {kind: [] for kind in statements}
            for _ in range(blocks):
                for kind, (query, args) in statements.items():
                    timings[kind].append(await _per_check_us(conn, query, args, len(pairs)))
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    medians = {kind: statistics.median(us) for kind, us in timings.items()}
    before = medians.pop("before sessions")
    print(f"before sessions: median {before:.1f} us per check over {blocks} blocks of {per_block}")
    for kind, us in medians.items():
        print(f"{kind}: median {us:.1f} us per check ({(us / before - 1) * 100:+.1f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.auth_query_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--per-block", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32, help="checks a statement in the batched blocks")
    args = parser.parse_args()
    asyncio.run(main_async(args.pg_url, args.blocks, args.per_block, args.batch))


if __name__ == "__main__":
    main()
