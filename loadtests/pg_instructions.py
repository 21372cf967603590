"""PostgreSQL's instructions per payment, counted by valgrind's callgrind: the database
side of a payment as a figure that does not move with the machine's noise, for
comparing two versions of the stored functions or of the schema, where wrk's rate and
PostgreSQL's CPU time per request move by 10 to 20% between runs.

    python3 dev.py tools python -m loadtests.pg_instructions
    python3 dev.py tools python -m loadtests.pg_instructions --payments 300 --warmup 50

A throwaway cluster (initdb, the project's migrations) is seeded like the benchmark
(1,000 products, 50 customers, --orders one-product orders from one address) through the
service's own order statement, with the older half of them paid, and analyzed. Then a
single-user backend (`postgres --single`: no network, no other process) runs under
callgrind what a payment asks of the database, as prepared statements with generic
plans, as the service's sessions do: the owner check, step 1 (`begin_payment`), the
simulated gateway's ledger insert and step 3 (`settle_payment`), each its own
transaction. It runs twice on copies of the cluster,
for --warmup payments and for --warmup + --payments; the difference divided by
--payments is one payment's instructions, with the backend's start and the plans'
first use taken out (and the longer run's larger checkpoint at its end left in).
Commits are counted, not the time their flushes take. The statements are the service's
own text, given arguments of the shape the service gives them. The backend prints each
answer as text (about a tenth of the count, where the service's sessions get them in
binary): compare versions that answer in the same shape. The counted payments move hold
counters that stay above zero, as the benchmark's do.

A run that does not pay every order it was given (a statement failed, or a step
refused) prints no figure and keeps its work folder.

Needs valgrind and PostgreSQL's server binaries (Debian packages; --pg-bin finds them
under /usr/lib/postgresql by default). When run as root, PostgreSQL runs as the
`postgres` user.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg

from db import migrations
from db import orders as orders_db
from db import payments as payments_db
from db import simulated_provider as ledger_db
from loadtests.order_profile import seed
from server.domain.orders import order_terms
from server.runtime.config import load

_PRODUCTS, _CUSTOMERS = 1000, 50
_DATABASE = "instructions"

# The statements a payment makes, in its order, prepared from the service's own text
# (db/payments.py, db/simulated_provider.py: their private constants on purpose, so that
# what is counted cannot drift from what the service runs), as the session sees them:
# application_name as the service sets it (its events' notice), generic plans as the
# database is set to (sql/005_plan_cache.sql). Each is squeezed onto one line for the
# single-user backend, so none may hold a `--` comment (tests/test_pg_instructions.py
# would fail).
_PREPARE = (
    "SET plan_cache_mode = force_generic_plan",
    "SET application_name = 'storefront-instructions'",
    f"PREPARE payable AS {payments_db._PAYABLE}",
    f"PREPARE begin_payment AS {payments_db._BEGIN}",
    f"PREPARE record_charge AS {ledger_db._RECORD_CHARGE}",
    f"PREPARE settle_payment AS {payments_db._SETTLE}",
)


_PAID = "SELECT count(*) AS paid FROM payments WHERE provider_key LIKE 'pay_instructions_%' AND status = 'succeeded'"


def _pg_bin(given: str | None) -> Path:
    if given:
        return Path(given)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql: give --pg-bin")
    return Path(found[-1]).parent


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class CountFailed(Exception):
    """The run did not pay every order it was given: its figure would be of less work."""


def payment_script(orders: list[tuple[int, int]]) -> str:
    """The statements that pay these (order id, customer id) pending orders, one a line
    (as a single-user backend reads them), after the statements' preparation, and the
    count of the payments they made that succeeded (`paid`)."""
    lines = [" ".join(statement.split()) + ";\n" for statement in _PREPARE]
    defaults = load(environ={})
    limits = f"{defaults.payment_max_declines_per_order}, {defaults.payment_max_declines_per_user}"
    for order_id, user_id in orders:
        key = f"pay_instructions_{order_id}"
        # Arguments of the shape the service passes with the benchmark's settings (the
        # lease, the worker, the ledger's amount and reference differ: the work does not).
        # Step 3 is given the id step 1's insert took, as the service passes the id step 1
        # answered; had step 1 refused, that would be the previous payment's, already
        # settled: step 3 would change nothing and the final count of paid orders fails
        # the run.
        lines.append(f"EXECUTE payable({order_id});\n")
        lines.append(
            f"EXECUTE begin_payment({order_id}, {user_id}, NULL, 'simulated', '{key}', 30, NULL, {limits}, "
            "'127.0.0.1', 0, 'tok_visa');\n"
        )
        lines.append(f"EXECUTE record_charge('{key}', 'sim_{order_id}', 100, 'USD', 'succeeded', NULL, true);\n")
        lines.append(
            f"EXECUTE settle_payment(currval('payments_id_seq'), 'succeeded', 'sim_{order_id}', NULL, NULL, NULL);\n"
        )
    lines.append(_PAID + ";\n")
    return "".join(lines)


async def _seed(server: str, orders: int) -> list[tuple[int, int]]:
    """The catalog, the customers, their orders and the older half's payments; the
    pending orders' (order id, customer id)."""
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f"CREATE DATABASE {_DATABASE}")
    finally:
        await admin.close()
    dsn = f"{server}/{_DATABASE}"
    await migrations.apply_pending(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    try:
        products, users = await seed(pool, _PRODUCTS, _CUSTOMERS)
        terms = order_terms(load(environ={}, order_max_pending_per_user=1_000_000))
        queue = list(range(orders))

        async def client() -> None:
            while queue:
                n = queue.pop()
                item = [(products[n % len(products)], 1)]
                await orders_db.create(pool, orders_db.NewOrder(users[n % len(users)], "127.0.0.1", item), terms)

        await asyncio.gather(*(client() for _ in range(4)))
        placed = [(r["id"], r["user_id"]) for r in await pool.fetch("SELECT id, user_id FROM orders ORDER BY id")]
        # The older half paid, and then the statistics taken, as in a shop that has
        # taken payments before (plans made on an empty payments table would scan it).
        for order_id, user_id in placed[: len(placed) // 2]:
            payment = await payments_db.begin(
                pool,
                order_id=order_id,
                user_id=user_id,
                amount=None,
                provider="simulated",
                provider_key=f"pay_seed_{order_id}",
                lease_seconds=30.0,
                worker=None,
                max_declines_per_order=5,
                max_declines_per_user=20,
                client_ip="127.0.0.1",
                max_declines_per_ip=0,
                payment_method="tok_visa",
            )
            assert payment is not None
            await payments_db.settle(
                pool, payment["id"], status="succeeded", provider_ref="sim_seed", failure_reason=None
            )
        await pool.execute("ANALYZE")
        return placed[len(placed) // 2 :]
    finally:
        await pool.close()


def _count(pg_bin: Path, cluster: Path, orders: list[tuple[int, int]], work: Path, name: str) -> int:
    """The instructions of a single-user backend paying `orders` on a copy of `cluster`;
    CountFailed unless it paid them all."""
    copy = work / f"run-{name}"
    subprocess.run(["cp", "-a", str(cluster), str(copy)], check=True)  # its owner kept
    out = work / f"callgrind.{name}"
    (work / f"{name}.sql").write_text(payment_script(orders))
    command = _as_postgres(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            str(pg_bin / "postgres"),
            "--single",
            "-D",
            str(copy),
            _DATABASE,
        ]
    )
    # A single-user backend writes answers to stdout and errors to stderr, and goes on
    # after an error.
    with (
        open(work / f"{name}.sql") as stdin,
        open(work / f"{name}.out", "w") as stdout,
        open(work / f"{name}.err", "w") as stderr,
    ):
        subprocess.run(command, stdin=stdin, stdout=stdout, stderr=stderr, check=True)
    if "ERROR:" in (work / f"{name}.err").read_text():
        raise CountFailed(f"a statement failed: see {work / f'{name}.err'}")
    paid = re.findall(r'paid = "(\d+)"', (work / f"{name}.out").read_text())
    if paid != [str(len(orders))]:
        raise CountFailed(f"paid {paid} of {len(orders)} orders: see {work / f'{name}.out'}")
    totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    assert totals is not None, out
    shutil.rmtree(copy)
    return int(totals.group(1))


def run(args: argparse.Namespace) -> int:
    pg_bin = _pg_bin(args.pg_bin)
    work = Path(tempfile.mkdtemp(prefix="pg_instructions_"))
    cluster = work / "cluster"
    port = _free_port()
    try:
        if os.geteuid() == 0:
            shutil.chown(work, "postgres")
        subprocess.run(
            _as_postgres([str(pg_bin / "initdb"), "-D", str(cluster), "-A", "trust", "-U", "postgres"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={work} -c autovacuum=off"
        start = [str(pg_bin / "pg_ctl"), "-D", str(cluster), "-l", str(work / "server.log"), "-o", options, "-w"]
        subprocess.run(_as_postgres([*start, "start"]), check=True, stdout=subprocess.DEVNULL)
        try:
            orders = asyncio.run(_seed(f"postgresql://postgres@127.0.0.1:{port}", args.orders))
        finally:
            subprocess.run(
                _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(cluster), "-w", "stop"]),
                check=True,
                stdout=subprocess.DEVNULL,
            )
        orders = orders[-(args.warmup + args.payments) :]
        warm = _count(pg_bin, cluster, orders[: args.warmup], work, "warmup")
        full = _count(pg_bin, cluster, orders, work, "measured")
        per_payment = (full - warm) / args.payments
        print(f"PostgreSQL instructions per payment: {per_payment:,.0f} ({args.payments} payments after {args.warmup})")
        if args.keep:
            print(f"kept: {work} (callgrind.warmup, callgrind.measured: callgrind_annotate them)")
        return 0
    except CountFailed as failed:
        print(f"no figure: {failed}", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=6000, help="orders seeded (the older half paid before)")
    parser.add_argument("--payments", type=int, default=300, help="payments counted")
    parser.add_argument("--warmup", type=int, default=50, help="payments before them (taken out)")
    parser.add_argument("--pg-bin", help="PostgreSQL's server binaries (default: the newest under /usr/lib/postgresql)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder with both callgrind files")
    args = parser.parse_args(argv)
    if args.orders // 2 < args.warmup + args.payments:
        parser.error("--orders must be at least twice --warmup + --payments")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise SystemExit("run as root, PostgreSQL runs as the user postgres, and there is none") from None
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
