"""The write path against the database's own limit: PostgreSQL CPU per order when
orders come through the service (wrk, scenario order_create) against PostgreSQL CPU
per transaction when pgbench runs the very statement POST /api/orders runs (the
same SQL as db/orders.py, which writes the order.created event too; one random
product, a random customer, the service's TTL and hold limits), back to back on
one database, alternating, so that the machine's drift hits both alike.

    python3 dev.py tools python -m loadtests.write_path --rounds 2 --duration 10

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
from server.runtime.config import Config, load

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


_SERVICE = ["storefront", "storefront-catalog-watch"]
_PGBENCH = ["storefront-pgbench"]


async def _sample(conn: asyncpg.Connection, db: str, applications: list[str]) -> tuple[float, int]:
    """PostgreSQL CPU seconds of the matching backends so far, and the orders so far."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = ANY($2)", db, applications
    )
    orders = await conn.fetchval("SELECT count(*) FROM orders")
    return sum(_cpu_seconds(r["pid"]) for r in pids), int(orders)


def pgbench_script(config: Config) -> str:
    """db/orders.py's order creation, the whole of POST /api/orders' database work
    (one statement, which writes the order.created event too): the customer and the
    product as pgbench variables, the client address the benchmark's, the order TTL and
    hold limits as `config` (the service's settings) has them."""
    sql = " ".join(orders_db._CREATE.split())
    values = (
        "{uid}", "'127.0.0.1'", "ARRAY[:pid]::bigint[]", "ARRAY[1]::integer[]", str(config.order_ttl_seconds),
        str(config.order_max_pending_per_user), str(config.order_max_held_units_per_product),
        str(config.order_max_held_units_per_product_per_ip),
    )  # fmt: skip
    for n, value in enumerate(values, start=1):
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


async def _measure_pgbench(options: bench.Options, dsn: str, db: str, script: Path) -> tuple[float, int]:
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
        print(f"    pgbench: {tps.group(1) if tps else '?'} tps", flush=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.write_path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", default="64")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--wrk-cpus", default="1")
    args, rest = parser.parse_known_args(argv)
    if shutil.which("pgbench") is None or shutil.which("wrk") is None:
        raise SystemExit("needs pgbench (postgresql-client) and wrk")
    options = bench.parse(
        ["--duration", str(args.duration), "--warmup", str(args.warmup), "--connections", args.connections,
         "--server-cpus", args.server_cpus, "--wrk-cpus", args.wrk_cpus, "--scenarios", "order_create",
         "--rounds", str(args.rounds), *rest]
    )  # fmt: skip
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = asyncio.run(run(options))
    service = statistics.median(r["service_ms"] for r in results)
    pgbench = statistics.median(r["pgbench_ms"] for r in results)
    command = "python -m loadtests.write_path " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n`{command}` ({started}), medians of {len(results)} rounds:")
    print(f"PostgreSQL CPU per order: service {service:.3f} ms, pgbench {pgbench:.3f} ms, "
          f"ratio {service / pgbench:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
