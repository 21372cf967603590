"""The project's benchmark: the five scenarios of ../shared/bench against this
service, with wrk, writing a results table and a plot.

    python3 dev.py tools python -m loadtests.bench                      # every scenario, defaults
    python3 dev.py tools python -m loadtests.bench --scenarios product_get,order_create \\
        --pool-sizes 2,5,10,20,40 --rounds 2                            # the pool-size sweep
    python3 dev.py tools python -m loadtests.bench --workers 1,2 --server-cpus 0,1 --wrk-cpus 0,1
    python3 dev.py tools python -m loadtests.bench --scenarios order_create --webhooks none,hanging --rounds 3
                                                                        # cost of a receiver that never answers
    python3 dev.py tools python -m loadtests.bench --scenarios product_get,order_create \
        --connections 64,256,1024                                       # the overload curve
    python3 dev.py tools python -m loadtests.bench --scenarios order_pay --payment-latency-ms 100 \
        --env PAYMENT_PROVIDER=simulated --env PAYMENT_PROVIDER=stripe --rounds 3
                                                                        # paying through Stripe's stand-in
    python3 dev.py tools python -m loadtests.bench --scenarios order_pay --observe
                                                                        # and where each run's time went

A variant with PAYMENT_PROVIDER=stripe pays through Stripe's stand-in
(../shared/stripe-standin, or STRIPE_STANDIN), started for it with --payment-latency-ms
on every call (unpinned unless --standin-cpus) and sending its signed events to the
server, as Stripe would (STANDIN_EVENTS=off in the variant: none sent). The stand-in
sends every type of event, three per payment; Stripe sends the types registered for
the endpoint (one per payment: docs/payments.md). A variant with BENCH_SERVER=pay_floor
is seeded through the service, then measured on the payment floor (loadtests/pay_floor.py:
a payment's database work and nothing else) in its place; it serves order_pay only.

Each configuration (pool size x workers x --env variant) gets a fresh database and a
fresh server (pinned with taskset to --server-cpus; wrk to --wrk-cpus), seeded
through the API (1,000 products, 50 customers logged in, pending orders for
order_pay). With --webhooks hanging, a webhook subscribed to every event points at a
receiver that accepts connections and never answers. Every scenario has a warm-up,
then a measured run. With --observe, each measured run is watched as well
(loadtests/observe.py: the server's event loop on a CPU or waiting for one, PostgreSQL's
CPU, transactions, sequential scans and WAL flushes, what its sessions waited on), and
what was seen is printed under the run and kept in results.json. Results go to
--out-dir: results.json, results.md (the table) and results.png (the plot).
Needs wrk (Debian package) and a PostgreSQL where databases may be created
(--pg-url, default the local server).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from loadtests.observe import Observation, ObservationFailed, Observer
from server.runtime.ports import free_port
from tests.stripe_standin import WEBHOOK_PATH, StandIn, for_load, new_api_key, stripe_env

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk" / "scenarios.lua"
SCENARIOS = ("product_get", "product_list", "profile_get", "order_create", "order_pay")
ADMIN = ("bench-admin@example.com", "bench-admin-password")


@dataclass
class Run:
    scenario: str
    config: dict[str, Any]
    round: int
    rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    exhausted: bool = False
    observed: Observation | None = None


@dataclass
class Options:
    scenarios: list[str]
    duration: float
    warmup: float
    connections: list[int]
    rounds: int
    pool_sizes: list[int]
    workers: list[int]
    webhooks: list[str]
    env_variants: list[dict[str, str]]
    server_cpus: str
    wrk_cpus: str
    standin_cpus: str
    payment_latency_ms: int
    pay_orders: int
    pg_url: str
    out_dir: Path
    checkouts: list[Path]
    flamegraphs: Path | None = None
    observe: bool = False
    runs: list[Run] = field(default_factory=list)


class HangingReceiver:
    """A webhook receiver that accepts every connection and never answers (each
    delivery runs into WEBHOOK_TIMEOUT_SECONDS). A thread: wrk blocks the bench's
    event loop while it runs."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/hook"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return  # closed
            self.held.append(connection)

    def close(self) -> None:
        self.socket.close()
        for connection in self.held:
            connection.close()


async def _add_webhook(url: str, target: str) -> None:
    async with aiohttp.ClientSession(base_url=url) as http:
        async with http.post("/api/users/login", json={"email": ADMIN[0], "password": ADMIN[1]}) as response:
            token = (await response.json())["access_token"]
        body = {"url": target, "events": ["*"]}
        async with http.post("/api/webhooks", json=body, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 201, await response.text()


async def _admin_sql(pg_url: str, sql: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Server:
    def __init__(self, options: Options, pool: int, workers: int, env: dict[str, str], db: str, checkout: Path) -> None:
        self.checkout = checkout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = options.pg_url.rsplit("/", 1)[0]
        self.env = {
            **os.environ,
            "DATABASE_URL": f"{base}/{db}",
            "PORT": str(self.port),
            "WORKERS": str(workers),
            "JWT_SECRET": "bench-" + "s" * 40,
            "ADMIN_EMAIL": ADMIN[0],
            "ADMIN_PASSWORD": ADMIN[1],
            "DB_POOL_MAX_SIZE": str(pool),
            "DB_POOL_MIN_SIZE": str(min(pool, 4)),
            "PAYMENT_PROVIDER_LATENCY_MS": str(options.payment_latency_ms),
            "LOG_LEVEL": "WARNING",
            # The load comes from one address and a few busy accounts: the abuse limits
            # would measure themselves, not the service.
            "REGISTER_MAX_PER_IP": "0",
            "LOGIN_MAX_FAILURES_PER_IP": "0",
            "ORDER_MAX_PENDING_PER_USER": "1000000",
            "ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP": "0",
            "PAYMENT_MAX_DECLINES_PER_IP": "0",
            "MAX_COMMANDS_PER_USER": "1000000",
            **env,
        }
        self.cpus = options.server_cpus
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, module: str = "server") -> None:
        command = ["taskset", "-c", self.cpus, sys.executable, "-m", module]
        self.process = subprocess.Popen(
            command, cwd=self.checkout, env=self.env, stdout=subprocess.DEVNULL, start_new_session=True
        )

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                try:
                    async with http.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()  # the port is bound again at once (the payment floor)


async def _seed(url: str, data_dir: Path, pay_orders: int) -> None:
    """1,000 products with stock that never runs out, 50 logged-in customers, and
    `pay_orders` pending orders for order_pay."""
    async with aiohttp.ClientSession(base_url=url) as http:

        async def post(path: str, body: Any, token: str | None = None) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.post(path, json=body, headers=headers) as response:
                assert response.status in (200, 201), (path, response.status, await response.text())
                return await response.json()

        admin = (await post("/api/users/login", {"email": ADMIN[0], "password": ADMIN[1]}))["access_token"]
        semaphore = asyncio.Semaphore(16)

        async def product(i: int) -> int:
            async with semaphore:
                body = {"name": f"Bench product {i}", "description": "d" * 230, "price": 100 + i, "stock": 10**9}
                product_id: int = (await post("/api/products", body, admin))["id"]
                return product_id

        products = await asyncio.gather(*(product(i) for i in range(1000)))

        async def customer(i: int) -> str:
            email = f"bench-{i}-{time.time_ns()}@example.com"
            await post("/api/users/register", {"email": email, "password": "bench-password", "name": "Bench"})
            token: str = (await post("/api/users/login", {"email": email, "password": "bench-password"}))[
                "access_token"
            ]
            return token

        tokens = [await customer(i) for i in range(50)]

        async def order(i: int) -> str:
            async with semaphore:
                token = tokens[i % len(tokens)]
                body = {"items": [{"product_id": products[i % len(products)], "quantity": 1}]}
                created = await post("/api/orders", body, token)
                return f"{created['id']}\t{token}"

        orders = await asyncio.gather(*(order(i) for i in range(pay_orders)))
    (data_dir / "products.txt").write_text("\n".join(map(str, products)) + "\n")
    (data_dir / "tokens.txt").write_text("\n".join(tokens) + "\n")
    (data_dir / "pay_orders.txt").write_text("\n".join(orders) + "\n")


def _start_profiler(
    options: Options, server: Server, scenario: str, config: dict[str, Any]
) -> subprocess.Popen[bytes] | None:
    """py-spy, sampling the server (one worker) during the measured run."""
    if options.flamegraphs is None or server.process is None:
        return None
    options.flamegraphs.mkdir(parents=True, exist_ok=True)
    suffix = f"-{config['checkout']}" if "checkout" in config else ""
    output = options.flamegraphs / f"{scenario}{suffix}.svg"
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [
        py_spy, "record", "--pid", str(server.process.pid),
        "--duration", str(max(1, round(options.duration) - 1)), "--rate", "200", "--format", "flamegraph",
        "--output", str(output), "--nonblocking",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wrk(
    options: Options, url: str, scenario: str, data_dir: Path, seconds: float, result: Path, connections: int
) -> dict[str, Any]:
    env = {**os.environ, "SCENARIO": scenario, "DATA_DIR": str(data_dir), "RESULT_FILE": str(result), "THREADS": "1"}
    command = [
        "taskset", "-c", options.wrk_cpus, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(LUA), url,
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True)
    summary: dict[str, Any] = json.loads(result.read_text())
    return summary


async def _configuration(
    options: Options, pool: int, workers: int, webhooks: str, env: dict[str, str], checkout: Path, round_: int
) -> None:
    key = json.dumps(env) + str(checkout) + webhooks
    db = f"loadbench_{os.getpid()}_{pool}_{workers}_{round_}_{abs(hash(key)) % 10_000}"
    config: dict[str, Any] = {"pool": pool, "workers": workers, **env}
    if len(options.webhooks) > 1 or webhooks != "none":
        config["webhooks"] = webhooks
    if len(options.checkouts) > 1:
        config["checkout"] = checkout.name
    await _admin_sql(options.pg_url, f'CREATE DATABASE "{db}"')
    receiver = HangingReceiver() if webhooks == "hanging" else None
    if receiver is not None:
        env = {"WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", **env}
    standin = None
    env = dict(env)  # the variant's own dict is read again by the next round
    events = env.pop("STANDIN_EVENTS", "on") != "off"  # (settings of the bench, not of the service)
    floor = env.pop("BENCH_SERVER", "service") == "pay_floor"
    if env.get("PAYMENT_PROVIDER") == "stripe":
        standin, stripe_env = _stripe_standin(options)
        env = {**stripe_env, **env}
        if not events:
            config["events"] = "off"
    server = Server(options, pool, workers, env, db, checkout)
    data_dir = Path(tempfile.mkdtemp(prefix="storefront-bench-"))
    try:
        server.start()
        await server.ready()
        if standin is not None and events:
            standin.configure(webhook_url=f"{server.url}{WEBHOOK_PATH}")
        pay_orders = options.pay_orders if "order_pay" in options.scenarios else 0
        await _seed(server.url, data_dir, pay_orders)
        # Each point of a connections curve pays orders of its own (an order is paid once).
        pay_lines = (data_dir / "pay_orders.txt").read_text().splitlines()
        pay_share = len(pay_lines) // len(options.connections)
        database = options.pg_url.rsplit("/", 1)[0] + f"/{db}"
        await _admin_sql(database, "VACUUM ANALYZE")
        if floor:
            server.stop()
            server.start("loadtests.pay_floor")
            await server.ready()
        if receiver is not None:
            # After the seeding: the webhook gets (and hangs on) what the scenarios do.
            await _add_webhook(server.url, receiver.url)
        for scenario, connections in itertools.product(options.scenarios, options.connections):
            if len(options.connections) > 1:
                config = {**config, "connections": connections}
            if scenario == "order_pay":
                # A quarter of this point's orders for the warm-up, the rest measured.
                point = options.connections.index(connections)
                lines = pay_lines[point * pay_share : (point + 1) * pay_share]
                split = len(lines) // 4
                (data_dir / "pay_orders.txt").write_text("\n".join(lines[:split]) + "\n")
                _wrk(options, server.url, scenario, data_dir, options.warmup, data_dir / "warm.json", connections)
                # The seeding made no payments, and this machine may run no autovacuum: without
                # statistics of the payments the warm-up made, the plans of the measured run would
                # be those of an empty payments table (sequential scans of it, as it grows).
                await _admin_sql(database, "ANALYZE")
                (data_dir / "pay_orders.txt").write_text("\n".join(lines[split:]) + "\n")
                planned = len(lines) - split
            else:
                _wrk(options, server.url, scenario, data_dir, options.warmup, data_dir / "warm.json", connections)
                planned = 0
            profiler = _start_profiler(options, server, scenario, config)
            observer = None
            if options.observe and server.process is not None:
                observer = Observer(server.process.pid, server.env["DATABASE_URL"], options.pg_url)
                observer.start()
            try:
                summary = _wrk(
                    options, server.url, scenario, data_dir, options.duration, data_dir / "run.json", connections
                )
            finally:
                if observer is not None:
                    observer.stop()
            if profiler is not None:
                profiler.wait()
            observed = None
            if observer is not None:
                try:
                    observed = observer.observation(summary["requests"])
                except ObservationFailed as failed:
                    # The run stands on its own: its rate is kept, without what was watched.
                    print(f"    not observed: {failed}", flush=True)
            statuses = {int(k): v for k, v in summary["statuses"].items()}
            ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
            run = Run(
                scenario=scenario,
                config=config,
                round=round_,
                rate=ok / (summary["duration_us"] / 1e6),
                p50_ms=summary["latency_us"]["p50"] / 1000,
                p90_ms=summary["latency_us"]["p90"] / 1000,
                p99_ms=summary["latency_us"]["p99"] / 1000,
                requests=summary["requests"],
                non_2xx=sum(v for k, v in statuses.items() if not 200 <= k < 300),
                socket_errors=summary["socket_errors"],
                # When the orders run out, wrk stops with one request in flight on each
                # connection, never counted: the rate is then the supply's, not the server's.
                exhausted=bool(planned) and summary["requests"] + connections >= planned,
                observed=observed,
            )
            options.runs.append(run)
            print(
                f"{scenario:13} {json.dumps(config):45} {run.rate:9,.0f} req/s  p50 {run.p50_ms:7.2f} ms  "
                f"p99 {run.p99_ms:7.2f} ms  non-2xx {run.non_2xx}  sock err {run.socket_errors}"
                + ("  EXHAUSTED" if run.exhausted else ""),
                flush=True,
            )
            if observed is not None:
                print(f"    {observed.line()}", flush=True)
    finally:
        server.stop()
        if standin is not None:
            standin.stop()
        if receiver is not None:
            receiver.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        await _admin_sql(options.pg_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _stripe_standin(options: Options) -> tuple[StandIn, dict[str, str]]:
    """Stripe's stand-in answering every call after --payment-latency-ms, on the wrk
    CPUs (it stands for a gateway elsewhere), and the server's settings for it."""
    standin = for_load(options.payment_latency_ms, options.standin_cpus, "PAYMENT_PROVIDER=stripe")
    return standin, stripe_env(standin, new_api_key())


def _label(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _medians(runs: list[Run]) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        grouped.setdefault((run.scenario, _label(run.config)), []).append(run)
    rows = []
    for (scenario, label), group in grouped.items():
        rows.append(
            {
                "scenario": scenario,
                "config": label,
                "rate": statistics.median(r.rate for r in group),
                "min": min(r.rate for r in group),
                "max": max(r.rate for r in group),
                "p50_ms": statistics.median(r.p50_ms for r in group),
                "p99_ms": statistics.median(r.p99_ms for r in group),
                "non_2xx": sum(r.non_2xx for r in group),
                "socket_errors": sum(r.socket_errors for r in group),
                "rounds": len(group),
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | configuration | req/s (median) | min..max | p50 ms | p99 ms | p99/p50 | non-2xx | sock err |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['config']} | {r['rate']:,.0f} | {r['min']:,.0f}..{r['max']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99_ms'] / max(r['p50_ms'], 1e-9):.1f} | "
            f"{r['non_2xx']} | {r['socket_errors']} |"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], options: Options, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = len(options.pool_sizes) > 1
    scenarios = [s for s in options.scenarios if any(r["scenario"] == s for r in rows)]
    if len(options.connections) > 1:
        _overload_plot(rows, options, scenarios, path)
        return
    if sweep:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for scenario in scenarios:
            mine = [r for r in rows if r["scenario"] == scenario]
            sizes = [int(r["config"].split("pool=")[1].split(",")[0]) for r in mine]
            axes[0].plot(sizes, [r["rate"] for r in mine], marker="o", label=scenario)
            axes[1].plot(sizes, [r["p99_ms"] for r in mine], marker="o", label=scenario)
        axes[0].set(title="Throughput vs DB_POOL_MAX_SIZE", xlabel="connections per worker", ylabel="req/s")
        axes[1].set(title="p99 latency vs DB_POOL_MAX_SIZE", xlabel="connections per worker", ylabel="ms")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xticks(options.pool_sizes, [str(s) for s in options.pool_sizes])
            ax.grid(alpha=0.3)
            ax.legend()
    else:
        fig, ax = plt.subplots(figsize=(9, 4.2))
        several = len(rows) > len(scenarios)
        labels = [f"{r['scenario']}\n{r['config']}" if several else r["scenario"] for r in rows]
        ax.bar(range(len(rows)), [r["rate"] for r in rows], color="#3b7dd8")
        ax.set_xticks(range(len(rows)), labels, fontsize=8)
        ax.set(ylabel="req/s (2xx)", title=f"storefront, {options.connections[0]} connections")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _overload_plot(rows: list[dict[str, Any]], options: Options, scenarios: list[str], path: Path) -> None:
    """Throughput (2xx), p50/p99 and non-2xx share against connections."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for scenario in scenarios:
        mine = sorted(
            (r for r in rows if r["scenario"] == scenario), key=lambda r: int(r["config"].split("connections=")[1])
        )
        conns = [int(r["config"].split("connections=")[1]) for r in mine]
        axes[0].plot(conns, [r["rate"] for r in mine], marker="o", label=scenario)
        axes[1].plot(conns, [r["p99_ms"] for r in mine], marker="o", label=f"{scenario} p99")
        axes[1].plot(conns, [r["p50_ms"] for r in mine], marker="x", linestyle="--", label=f"{scenario} p50")
        axes[2].plot(conns, [r["non_2xx"] for r in mine], marker="o", label=scenario)
    axes[0].set(title="2xx throughput", xlabel="connections", ylabel="req/s")
    axes[1].set(title="latency", xlabel="connections", ylabel="ms")
    axes[2].set(title="non-2xx answers (503 sheds)", xlabel="connections", ylabel="responses")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(options.connections, [str(c) for c in options.connections])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per scenario")
    parser.add_argument("--connections", default="64", help="wrk connections (a curve when several: 64,256,1024)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every configuration; medians reported")
    parser.add_argument("--pool-sizes", default="20", help="DB_POOL_MAX_SIZE values (a sweep when several)")
    parser.add_argument("--workers", default="1", help="WORKERS values")
    parser.add_argument(
        "--webhooks", default="none", help="none and/or hanging: a webhook for every event whose receiver never answers"
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE[,KEY=VALUE] variant (repeatable)")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--wrk-cpus", default="1")
    parser.add_argument(
        "--standin-cpus",
        default="",
        help="CPUs of Stripe's stand-in (default: unpinned; it stands for a gateway elsewhere)",
    )
    parser.add_argument("--payment-latency-ms", type=int, default=100)
    parser.add_argument(
        "--pay-orders",
        type=int,
        default=8000,
        help="pending orders made for order_pay (shared out between the points of a connections curve)",
    )
    parser.add_argument(
        "--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--flamegraphs", help="record a py-spy flame graph (SVG) of each measured run into this folder")
    parser.add_argument(
        "--observe",
        action="store_true",
        help="watch each measured run: the server's event loop, PostgreSQL's CPU, transactions, scans and waits",
    )
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        help="serve from this checkout of the project instead (repeatable: compare versions, e.g. git worktrees)",
    )
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    variants = [dict(kv.split("=", 1) for kv in v.split(",")) for v in args.env] or [{}]
    return Options(
        scenarios=[s for s in args.scenarios.split(",") if s],
        duration=args.duration,
        warmup=args.warmup,
        connections=[int(x) for x in args.connections.split(",")],
        rounds=args.rounds,
        pool_sizes=[int(x) for x in args.pool_sizes.split(",")],
        workers=[int(x) for x in args.workers.split(",")],
        webhooks=[w for w in args.webhooks.split(",") if w],
        env_variants=variants,
        server_cpus=args.server_cpus,
        wrk_cpus=args.wrk_cpus,
        standin_cpus=args.standin_cpus,
        payment_latency_ms=args.payment_latency_ms,
        pay_orders=args.pay_orders,
        pg_url=args.pg_url,
        out_dir=Path(args.out_dir or ROOT / "loadtests" / "reports" / f"bench-{stamp}"),
        checkouts=[Path(c).resolve() for c in args.checkout] or [ROOT],
        flamegraphs=Path(args.flamegraphs) if args.flamegraphs else None,
        observe=args.observe,
    )


def refuse_unservable_floor(options: Options) -> None:
    """Exits naming what a BENCH_SERVER=pay_floor variant cannot serve: the floor pays
    orders (nothing else) in one process, through the simulated gateway, with no
    webhooks, and only a checkout that has it can start it."""
    floors = [env for env in options.env_variants if env.get("BENCH_SERVER", "service") != "service"]
    if any(env["BENCH_SERVER"] != "pay_floor" for env in floors):
        raise SystemExit("BENCH_SERVER takes service or pay_floor")
    if not floors:
        return
    if options.scenarios != ["order_pay"]:
        raise SystemExit("BENCH_SERVER=pay_floor serves order_pay only: --scenarios order_pay")
    if options.workers != [1]:
        raise SystemExit("BENCH_SERVER=pay_floor runs one process: --workers 1")
    if options.webhooks != ["none"]:
        raise SystemExit("BENCH_SERVER=pay_floor has no webhooks: --webhooks none")
    if any(env.get("PAYMENT_PROVIDER", "simulated") != "simulated" for env in floors):
        raise SystemExit("BENCH_SERVER=pay_floor pays through the simulated gateway only")
    for checkout in options.checkouts:
        if not (checkout / "loadtests" / "pay_floor.py").is_file():
            raise SystemExit(f"{checkout} has no loadtests/pay_floor.py for BENCH_SERVER=pay_floor")


async def main_async(options: Options) -> None:
    for scenario in options.scenarios:
        if scenario not in SCENARIOS:
            raise SystemExit(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    refuse_unservable_floor(options)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    if not set(options.webhooks) <= {"none", "hanging"}:
        raise SystemExit("--webhooks takes none and/or hanging")
    configurations = list(
        itertools.product(
            options.pool_sizes, options.workers, options.webhooks, options.env_variants, options.checkouts
        )
    )
    for round_ in range(1, options.rounds + 1):
        # Rounds alternate configurations (A B C, A B C) so that drift hits all alike.
        for pool, workers, webhooks, env, checkout in configurations:
            await _configuration(options, pool, workers, webhooks, env, checkout, round_)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    # SIGTERM stops a run as Ctrl-C does: by unwinding through the finally blocks that
    # stop the configuration's server and drop its database (without this, SIGTERM
    # ended the process and left both behind).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        asyncio.run(main_async(options))
    except KeyboardInterrupt:
        print("stopped: the running configuration's server was stopped and its database dropped", file=sys.stderr)
        return 130
    rows = _medians(options.runs)
    command = "python -m loadtests.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (
        f"Command: `{command}`  \nDate: {started:%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} CPUs; "
        f"server on CPUs {options.server_cpus}, wrk on CPUs {options.wrk_cpus}; "
        f"{','.join(map(str, options.connections))} connections; "
        f"{options.duration:g} s measured after {options.warmup:g} s warm-up; "
        f"payment provider latency {options.payment_latency_ms} ms.\n\n"
    )
    table = _table(rows)
    (options.out_dir / "results.md").write_text(header + table + "\n")
    (options.out_dir / "results.json").write_text(
        json.dumps(
            {
                "command": command,
                "date": started.isoformat(),
                "runs": [asdict(r) for r in options.runs],
                "medians": rows,
            },
            indent=2,
        )
    )
    _plot(rows, options, options.out_dir / "results.png")
    print("\n" + header + table)
    print(f"\nwritten to {options.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
