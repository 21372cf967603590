"""The write path against the database's own limit: PostgreSQL CPU per order when
orders come through the service (wrk, scenario order_create) against PostgreSQL CPU
per transaction when pgbench runs the very statement POST /api/orders runs (the
same SQL as db/orders.py, which writes the order.created event too; one random
product, a random customer, the service's TTL and hold limits), back to back on
one database, alternating, so that the machine's drift hits both alike.

    python3 dev.py tools python -m loadtests.write_path --rounds 2 --duration 10

With --checkout it compares, the same way (pgbench against pgbench, alternating),
the statement creating an order that names nothing else with the same statement
creating it with an inline shipping address, a shipping method and a percent
discount code (one code for every order, without max_redemptions), for the
contract's budget of the checkout's cost.

PostgreSQL CPU is read from /proc (utime + stime) of the backends serving each side
(application_name `storefront` and `storefront-catalog-watch` for the service;
`storefront-pgbench` for pgbench, a name that gets the trigger's NOTICE as the
service's sessions do), sampled after a warm-up and at the end of the measured
window; orders are counted in the table. So PostgreSQL must run on this machine.
Needs wrk, pgbench and a PostgreSQL where databases may be created (--pg-url).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from db import orders as orders_db
from loadtests import bench
from loadtests.observe import cpu_seconds
from server.runtime.config import Config, load

_SERVICE = ["storefront", "storefront-catalog-watch"]
_PGBENCH = ["storefront-pgbench"]


async def _sample(conn: asyncpg.Connection, db: str, applications: list[str]) -> tuple[float, int]:
    """PostgreSQL CPU seconds of the matching backends so far, and the orders so far."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = ANY($2)", db, applications
    )
    orders = await conn.fetchval("SELECT count(*) FROM orders")
    return sum(cpu_seconds(r["pid"]) for r in pids), int(orders)


# What the checkout variant's orders name: an inline address (as POST /api/orders
# passes it), a shipping method and a discount code, by id and code.
_ADDRESS = "ROW('Bench Customer','1 Bench Street','','Springfield','','12345','US','')::postal_address"


def pgbench_script(config: Config, checkout: tuple[int, str] | None = None) -> str:
    """db/orders.py's order creation, the whole of POST /api/orders' database work
    (one statement, which writes the order.created event too): the customer and the
    product as pgbench variables, the client address the benchmark's, the order TTL and
    hold limits as `config` (the service's settings) has them; with `checkout` (a
    shipping method's id and a discount code) shipped to an inline address with that
    method and that code."""
    sql = " ".join(orders_db._CREATE.split())
    if checkout is None:
        shipping = ("NULL::postal_address", "NULL::bigint", "NULL::bigint", "NULL::text")
    else:
        shipping = (_ADDRESS, "NULL::bigint", str(checkout[0]), f"'{checkout[1]}'")
    values = (
        "{uid}", "'127.0.0.1'", "ARRAY[:pid]::bigint[]", "ARRAY[1]::integer[]", str(config.order_ttl_seconds),
        str(config.order_max_pending_per_user), str(config.order_max_held_units_per_product),
        str(config.order_max_held_units_per_product_per_ip),
        *shipping, str(config.discount_max_unknown_per_user), "3600",
    )  # fmt: skip
    # From the highest: $1 must not replace the start of $10.
    for n, value in reversed(list(enumerate(values, start=1))):
        sql = sql.replace(f"${n}", value)
    # A parameter left unfilled would make every pgbench transaction fail.
    assert "$" not in sql, sql
    return "\\set pid random(:first_product, :last_product)\n\\set uid random(:first_user, :last_user)\n" + (
        sql.replace("{uid}", ":uid") + ";\n"
    )


async def _measure_service(
    options: bench.Options, server: bench.Server, data_dir: Path, dsn: str, db: str
) -> tuple[float, int]:
    conn = await asyncpg.connect(dsn)
    try:
        wrk = asyncio.create_task(
            asyncio.to_thread(
                bench._wrk,
                options,
                server.url,
                "order_create",
                data_dir,
                options.warmup + options.duration + 1,
                data_dir / "run.json",
                options.connections[0],
            )
        )
        await asyncio.sleep(options.warmup)
        cpu0, orders0 = await _sample(conn, db, _SERVICE)
        await asyncio.sleep(options.duration)
        cpu1, orders1 = await _sample(conn, db, _SERVICE)
        await wrk
    finally:
        await conn.close()
    return cpu1 - cpu0, orders1 - orders0


async def _measure_pgbench(
    options: bench.Options, dsn: str, db: str, script: Path, *, label: str = "pgbench"
) -> tuple[float, int]:
    conn = await asyncpg.connect(dsn)
    try:
        users = await conn.fetchrow("SELECT min(id), max(id) FROM users WHERE role = 'customer'")
        products = await conn.fetchrow("SELECT min(id), max(id) FROM products")
        assert users is not None
        assert products is not None
        seconds = round(options.warmup + options.duration + 1)
        command = [
            "taskset", "-c", options.wrk_cpus, "pgbench", "-n", "-M", "prepared", "-c", "8", "-j", "1",
            "-T", str(seconds), "-f", str(script),
            "-D", f"first_user={users[0]}", "-D", f"last_user={users[1]}",
            "-D", f"first_product={products[0]}", "-D", f"last_product={products[1]}", dsn,
        ]  # fmt: skip
        env = {**os.environ, "PGAPPNAME": _PGBENCH[0]}
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.sleep(options.warmup)
        cpu0, orders0 = await _sample(conn, db, _PGBENCH)
        await asyncio.sleep(options.duration)
        cpu1, orders1 = await _sample(conn, db, _PGBENCH)
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"pgbench failed: {out.decode()[-500:]}")
        tps = re.search(r"tps = ([\d.]+)", out.decode())
        print(f"    {label}: {tps.group(1) if tps else '?'} tps", flush=True)
    finally:
        await conn.close()
    return cpu1 - cpu0, orders1 - orders0


async def run(options: bench.Options) -> list[dict[str, float]]:
    db = f"writepath_{os.getpid()}"
    dsn = options.pg_url.rsplit("/", 1)[0] + f"/{db}"
    await bench._admin_sql(options.pg_url, f'CREATE DATABASE "{db}"')
    server = bench.Server(options, options.pool_sizes[0], 1, options.env_variants[0], db, bench.ROOT)
    data_dir = Path(tempfile.mkdtemp(prefix="storefront-writepath-"))
    script = data_dir / "create_order.sql"
    script.write_text(pgbench_script(load(environ=server.env)))
    results = []
    try:
        server.start()
        await server.ready()
        await bench._seed(server.url, data_dir, 0)
        await bench._admin_sql(dsn, "VACUUM ANALYZE")
        for round_ in range(1, options.rounds + 1):
            cpu, orders = await _measure_service(options, server, data_dir, dsn, db)
            service = {"cpu_ms_per_order": 1000 * cpu / max(orders, 1), "orders_per_s": orders / options.duration}
            print(f"round {round_} service: {service['orders_per_s']:,.0f} orders/s, "
                  f"PostgreSQL {service['cpu_ms_per_order']:.3f} ms CPU per order", flush=True)  # fmt: skip
            cpu, orders = await _measure_pgbench(options, dsn, db, script)
            pg = {"cpu_ms_per_order": 1000 * cpu / max(orders, 1), "orders_per_s": orders / options.duration}
            print(f"round {round_} pgbench: {pg['orders_per_s']:,.0f} orders/s, "
                  f"PostgreSQL {pg['cpu_ms_per_order']:.3f} ms CPU per transaction", flush=True)  # fmt: skip
            results.append(
                {
                    "service_ms": service["cpu_ms_per_order"],
                    "pgbench_ms": pg["cpu_ms_per_order"],
                    "service_rate": service["orders_per_s"],
                    "pgbench_rate": pg["orders_per_s"],
                }
            )
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        await bench._admin_sql(options.pg_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return results


# Customers made in the database for the checkout comparison: enough that each holds
# few pending orders (the pending-order limit counts them up to the limit), so the
# count stays as cheap for the last orders as for the first.
_CHECKOUT_CUSTOMERS = 20_000
_CHECKOUT_SEED = f"""
INSERT INTO users (email, name, password_hash)
SELECT 'bench-checkout-' || g || '@example.com', 'Bench', 'x' FROM generate_series(1, {_CHECKOUT_CUSTOMERS}) g;
INSERT INTO shipping_methods (name, price, currency, countries, free_over)
VALUES ('Bench parcel', 495, 'USD', '{{US,CA}}', 1000000);
SELECT create_discount('BENCH10', 'percent', 10, 'USD', 0, NULL, NULL, NULL, NULL, true);
"""


async def run_checkout(options: bench.Options) -> list[dict[str, float]]:
    """PostgreSQL CPU per order of the plain statement and of the checkout's, pgbench
    against pgbench, alternating."""
    db = f"writepath_checkout_{os.getpid()}"
    dsn = options.pg_url.rsplit("/", 1)[0] + f"/{db}"
    await bench._admin_sql(options.pg_url, f'CREATE DATABASE "{db}"')
    server = bench.Server(options, options.pool_sizes[0], 1, options.env_variants[0], db, bench.ROOT)
    data_dir = Path(tempfile.mkdtemp(prefix="storefront-writepath-"))
    results = []
    try:
        server.start()
        await server.ready()
        await bench._seed(server.url, data_dir, 0)
        server.stop()  # nothing but pgbench from here on
        await bench._admin_sql(dsn, _CHECKOUT_SEED)
        conn = await asyncpg.connect(dsn)
        try:
            method_id = await conn.fetchval("SELECT id FROM shipping_methods WHERE name = 'Bench parcel'")
        finally:
            await conn.close()
        config = load(environ=server.env)
        scripts = {}
        for name, checkout in (("plain", None), ("checkout", (method_id, "bench10"))):
            scripts[name] = data_dir / f"{name}.sql"
            scripts[name].write_text(pgbench_script(config, checkout))
        await bench._admin_sql(dsn, "VACUUM ANALYZE")
        for round_ in range(1, options.rounds + 1):
            figures = {}
            # Alternate which goes first, so that drift hits both alike.
            for name in ("plain", "checkout") if round_ % 2 else ("checkout", "plain"):
                cpu, orders = await _measure_pgbench(options, dsn, db, scripts[name], label=name)
                figures[name] = 1000 * cpu / max(orders, 1)
                print(f"round {round_} {name}: {orders / options.duration:,.0f} orders/s, "
                      f"PostgreSQL {figures[name]:.3f} ms CPU per order", flush=True)  # fmt: skip
            results.append({"plain_ms": figures["plain"], "checkout_ms": figures["checkout"]})
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
        await bench._admin_sql(options.pg_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.write_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", default="64")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--wrk-cpus", default="1")
    parser.add_argument(
        "--checkout", action="store_true", help="compare an order with an address, a method and a code to a plain one"
    )
    args, rest = parser.parse_known_args(argv)
    if shutil.which("pgbench") is None or (shutil.which("wrk") is None and not args.checkout):
        raise SystemExit("needs pgbench (postgresql-client) and wrk")
    options = bench.parse(
        ["--duration", str(args.duration), "--warmup", str(args.warmup), "--connections", args.connections,
         "--server-cpus", args.server_cpus, "--wrk-cpus", args.wrk_cpus, "--scenarios", "order_create",
         "--rounds", str(args.rounds), *rest]
    )  # fmt: skip
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = "python -m loadtests.write_path " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.checkout:
        checkout = asyncio.run(run_checkout(options))
        plain_ms = statistics.median(r["plain_ms"] for r in checkout)
        checkout_ms = statistics.median(r["checkout_ms"] for r in checkout)
        print(f"\n`{command}` ({started}), medians of {len(checkout)} rounds:")
        print(f"PostgreSQL CPU per order: plain {plain_ms:.3f} ms, with address, method and percent code "
              f"{checkout_ms:.3f} ms, ratio {checkout_ms / plain_ms:.2f}")  # fmt: skip
        return 0
    results = asyncio.run(run(options))
    service = statistics.median(r["service_ms"] for r in results)
    pgbench = statistics.median(r["pgbench_ms"] for r in results)
    print(f"\n`{command}` ({started}), medians of {len(results)} rounds:")
    print(f"PostgreSQL CPU per order: service {service:.3f} ms, pgbench {pgbench:.3f} ms, "
          f"ratio {service / pgbench:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
