"""Where an order's PostgreSQL time goes, statement by statement: the service's own
order statement (db/orders.py, the same call POST /api/orders makes) run --orders times
from --clients connections on a fresh, migrated database, then pg_stat_statements'
account of every statement it ran, nested ones included, per order.

    python3 dev.py python -m loadtests.order_profile --pg-url postgresql://postgres@127.0.0.1:5499/postgres

Needs a PostgreSQL whose shared_preload_libraries has pg_stat_statements with
pg_stat_statements.track = all (a cluster of one's own: the setting needs a restart),
where databases may be created. The figures are the statements' execution times as
PostgreSQL measured them, so they hold on a machine that is not quiet only roughly;
compare rows of one run with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from typing import Any

import asyncpg

from db import migrations
from db import orders as orders_db
from server.domain.orders import order_terms
from server.runtime.config import load

_SEED_PRODUCTS = """
INSERT INTO products (name, description, price, currency, stock, stock_received)
SELECT 'Product ' || n, repeat('d', 230), 100 + n, 'USD', 1000000000, 1000000000 FROM generate_series(1, $1) n
"""
_SEED_USERS = """
INSERT INTO users (email, name, password_hash)
SELECT 'customer-' || n || '@example.com', 'Customer', 'x' FROM generate_series(1, $1) n
"""
# How many of each hot table's updates were HOT (no index touched).
_TABLES = """
SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
WHERE relname IN ('products', 'users', 'orders') ORDER BY relname
"""
_STATEMENTS = """
SELECT calls, total_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g') AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY total_exec_time DESC
LIMIT $1
"""


async def seed(pool: asyncpg.Pool, products: int, users: int) -> tuple[list[int], list[int]]:
    """`products` products whose stock never runs out (one price each) and `users`
    customers, straight into the tables; their ids."""
    await pool.execute(_SEED_PRODUCTS, products)
    await pool.execute(_SEED_USERS, users)
    product_ids = [r["id"] for r in await pool.fetch("SELECT id FROM products ORDER BY id")]
    user_ids = [r["id"] for r in await pool.fetch("SELECT id FROM users ORDER BY id")]
    return product_ids, user_ids


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = args.pg_url.rsplit("/", 1)[0]
    name = f"order_profile_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(args.pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{base}/{name}"
    try:
        await migrations.apply_pending(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=args.clients, max_size=args.clients)
        await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        products, users = await seed(pool, args.products, args.users)
        config = load(environ={}, order_max_pending_per_user=1_000_000)
        terms = order_terms(config)

        async def place(count: int) -> float:
            queue = list(range(count))

            async def client() -> None:
                while queue:
                    n = queue.pop()
                    item = [(products[(n * 7919) % len(products)], 1)]
                    await orders_db.create(pool, orders_db.NewOrder(users[n % len(users)], "127.0.0.1", item), terms)

            started = time.monotonic()
            await asyncio.gather(*(client() for _ in range(args.clients)))
            return time.monotonic() - started

        # A quarter as many orders first, then statistics, as the service's own
        # maintenance keeps them (db/maintenance.py): plans made while the tables were
        # empty (foreign-key checks by sequential scan) would be measured otherwise.
        await place(args.orders // 4)
        await pool.execute("ANALYZE")
        await pool.execute("SELECT pg_stat_statements_reset()")
        elapsed = await place(args.orders)
        rows = await pool.fetch(_STATEMENTS, args.top)
        tables = await pool.fetch(_TABLES)
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {
        "orders": args.orders,
        "clients": args.clients,
        "orders_per_s": round(args.orders / elapsed, 1),
        "updates": {r["relname"]: {"all": r["n_tup_upd"], "hot": r["n_tup_hot_upd"]} for r in tables},
        "statements": [
            {
                "ms_per_order": round(r["total_exec_time"] / args.orders, 4),
                "calls_per_order": round(r["calls"] / args.orders, 2),
                "query": r["query"][:160],
            }
            for r in rows
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--orders", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(f"{result['orders']} orders from {result['clients']} connections: {result['orders_per_s']} orders/s")
    print(f"updates (all, HOT): {result['updates']}")
    for row in result["statements"]:
        print(f"{row['ms_per_order']:8.4f} ms/order  {row['calls_per_order']:6.2f} calls/order  {row['query']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
