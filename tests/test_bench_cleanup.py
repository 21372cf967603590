"""The benchmark (loadtests/bench.py, the pool sweep included) stopped with SIGTERM
leaves neither its server process nor its `loadbench_*` database behind, as with
Ctrl-C. Fault suite: it starts a real benchmark server (a few seconds)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.faults


def _servers_of(database_prefix: str) -> list[int]:
    """Pids of `python -m server` processes whose DATABASE_URL names one of the bench's
    databases (the bench starts its server with that variable)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if b"server" in command and any(
            v.startswith(b"DATABASE_URL=") and f"/{database_prefix}".encode() in v for v in environ
        ):
            found.append(int(proc.name))
    return found


async def _databases(pg_server: str, prefix: str) -> list[str]:
    conn = await asyncpg.connect(pg_server)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%")
        return [r["datname"] for r in rows]
    finally:
        await conn.close()


async def _connected(pg_server: str, prefix: str) -> bool:
    conn = await asyncpg.connect(pg_server)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname LIKE $1", prefix + "%"))
    finally:
        await conn.close()


@pytest.mark.parametrize("pool_sizes", ["20", "2,5"], ids=["bench", "pool-sweep"])
def test_sigterm_stops_the_benchmark_server_and_drops_its_database(
    pg_server: str, tmp_path: Path, pool_sizes: str
) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing in CI (Debian package wrk)")
        pytest.skip("wrk is not installed (Debian package wrk): the benchmark refuses to start without it")
    bench = subprocess.Popen(
        [sys.executable, "-m", "loadtests.bench", "--scenarios", "product_get", "--pool-sizes", pool_sizes,
         "--warmup", "60", "--duration", "60", "--pg-url", pg_server, "--out-dir", str(tmp_path),
         "--server-cpus", "0-1", "--wrk-cpus", "0-1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    prefix = f"loadbench_{bench.pid}_"
    try:
        deadline = time.monotonic() + 120
        # The event: the bench's server is up and connected to the bench's database.
        while not asyncio.run(_connected(pg_server, prefix)):
            assert bench.poll() is None, bench.stderr.read() if bench.stderr else ""
            assert time.monotonic() < deadline, "the benchmark's server never connected"
            time.sleep(0.1)
        assert _servers_of(prefix)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(120) != 0
    finally:
        if bench.poll() is None:
            bench.kill()
    assert asyncio.run(_databases(pg_server, prefix)) == []
    assert _servers_of(prefix) == []
