"""Instructions per request, counted by valgrind's callgrind: a figure that does not move
with the machine's noise, for comparing two servers (or two versions of one) where
wrk's req/s moves by 15% between runs.

    python3 dev.py tools python -m loadtests.instructions --path '/api/products?limit=20' \\
        --env DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<seeded db> --env WORKERS=1 \\
        -- .venv/bin/python -m server

The server runs under callgrind with instrumentation off while it starts and serves
--warmup requests; instrumentation is on for exactly --requests requests (sent by
--concurrency keep-alive clients), then the counts are dumped and summed. Only
user-space instructions of the server process count: not the kernel, not
PostgreSQL, and not cache misses, so it ranks the work a request costs, not its
latency. The server must stay one process (WORKERS=1 for this one). Needs valgrind
(Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp


async def _send(url: str, count: int, concurrency: int) -> None:
    async with aiohttp.ClientSession() as session:

        async def client(share: int) -> None:
            for _ in range(share):
                async with session.get(url) as response:
                    await response.read()
                    if response.status >= 400:
                        raise SystemExit(f"{url} answered {response.status}")

        await asyncio.gather(*(client(count // concurrency) for _ in range(concurrency)))


def _wait_healthy(base: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server exited while starting (see its log)")
        try:
            asyncio.run(_send(base + "/healthz", 1, 1))
            return
        except (aiohttp.ClientError, OSError):
            time.sleep(1)
    raise SystemExit(f"the server did not answer /healthz within {timeout:.0f} s")


def _callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def _total_instructions(out_dir: Path) -> int:
    total = 0
    for dump in out_dir.glob("callgrind.out*"):
        for line in dump.read_text().splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def measure(command: list[str], env: dict[str, str], args: argparse.Namespace) -> float:
    """Instructions per request of `command` serving args.path."""
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp, (Path(tmp) / "server.log").open("wb") as log:
        out_dir = Path(tmp)
        callgrind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out_dir}/callgrind.out",
        ]
        process = subprocess.Popen(
            [*callgrind, *command],
            env={**os.environ, "PORT": str(args.port), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(base, process, args.start_timeout)
            asyncio.run(_send(base + args.path, args.warmup, args.concurrency))
            _callgrind_control("--instr=on", process.pid)
            asyncio.run(_send(base + args.path, args.requests, args.concurrency))
            _callgrind_control("--instr=off", process.pid)
            _callgrind_control("--dump", process.pid)
        finally:
            process.terminate()
            process.wait(timeout=120)
        counted: int = args.requests // args.concurrency * args.concurrency
        return _total_instructions(out_dir) / counted


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", default="/api/products?limit=20", help="the request to count (GET)")
    p.add_argument("--requests", type=int, default=2000, help="requests counted (default 2000)")
    p.add_argument("--warmup", type=int, default=400, help="requests before counting (default 400)")
    p.add_argument("--concurrency", type=int, default=8, help="keep-alive clients (default 8)")
    p.add_argument("--port", type=int, default=8190)
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for /healthz")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server environment")
    p.add_argument("command", nargs="+", help="the server command, after --")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    per_request = measure(args.command, env, args)
    print(f"{per_request:,.0f} instructions per request ({args.requests} x GET {args.path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
