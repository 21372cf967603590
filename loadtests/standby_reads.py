"""Where catalog reads go under a mixed load, on scripts/stack.sh's stack with its
streaming standby (DATABASE_READ_URL): customers ordering a few products while
anonymous visitors read the whole catalog (product pages, list pages, searches).

    python3 dev.py python -m loadtests.standby_reads [--seconds 20] [--shoppers 8] [--visitors 16]

Prints the catalog reads each database served during the run (summed over the API
replicas' /metrics), the cache's hits, and the visitors' answers by status. Brings the
stack up in a folder of its own and takes it down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import stack_drills  # (scripts/ is not a package: found through the path above)


async def _reads_and_hits(stack: stack_drills.Stack) -> tuple[dict[str, float], dict[str, float]]:
    """Catalog reads so far by target, and the cache's hits by kind, over the replicas."""
    reads = await stack_drills.catalog_reads(stack)
    return reads, await stack_drills.counter_totals(stack, "catalog_cache_hits_total", "kind")


def _grown(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {key: round(value - before.get(key, 0.0)) for key, value in after.items()}


async def visitor(url: str, catalog: list[int], statuses: Counter[str], until: float, seed: int) -> None:
    """Anonymous reads: 70% product pages, 20% list pages, 10% searches."""
    rng = random.Random(seed)
    async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=10)) as http:
        while time.monotonic() < until:
            roll = rng.random()
            if roll < 0.7:
                path = f"/api/products/{rng.choice(catalog)}"
            elif roll < 0.9:
                path = f"/api/products?limit={rng.randint(5, 40)}"
            else:
                path = f"/api/products?q=Read&min_price={rng.randint(1, 900)}"
            try:
                async with http.get(path) as response:
                    await response.read()
                    statuses[str(response.status)] += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                statuses[type(exc).__name__] += 1


async def run(args: argparse.Namespace, stack: stack_drills.Stack) -> dict[str, Any]:
    tokens, ordered = await stack_drills.setup_shop(stack.url, args.shoppers)
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        login = {"email": stack_drills.ADMIN_EMAIL, "password": stack_drills.ADMIN_PASSWORD}
        async with http.post("/api/users/login", json=login) as response:
            admin = (await response.json())["access_token"]
        catalog = []
        for i in range(args.products):
            body = {"name": f"Read {i}", "price": 100 + i, "stock": 5}
            async with http.post("/api/products", json=body, headers={"Authorization": f"Bearer {admin}"}) as r:
                catalog.append((await r.json())["id"])
    await asyncio.sleep(1.5)  # the standby has the catalog; no worker remembers making it
    before = await _reads_and_hits(stack)
    shop = stack_drills.Load()
    statuses: Counter[str] = Counter()
    until = time.monotonic() + args.seconds
    await asyncio.gather(
        *(stack_drills.shopper(stack.url, token, ordered, shop, until, seed) for seed, token in enumerate(tokens)),
        *(visitor(stack.url, catalog, statuses, until, seed) for seed in range(args.visitors)),
    )
    after = await _reads_and_hits(stack)
    return {
        "seconds": args.seconds,
        "reads_by_target": _grown(before[0], after[0]),
        "cache_hits": _grown(before[1], after[1]),
        "visitor_statuses": dict(statuses),
        "shopper_statuses": dict(shop.statuses),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shoppers", type=int, default=8, help="customers ordering (and paying) 8 products")
    parser.add_argument("--visitors", type=int, default=16, help="anonymous readers of the whole catalog")
    parser.add_argument("--products", type=int, default=200, help="the catalog the visitors read")
    args = parser.parse_args(argv)
    stack = stack_drills.temporary_stack(
        "storefront-reads-",
        {
            "LOG_LEVEL": "WARNING",
            "PAYMENT_PROVIDER_LATENCY_MS": "50",
            "ORDER_MAX_PENDING_PER_USER": "1000000",
            "ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP": "0",
        },
    )
    folder = stack.folder.parent
    try:
        stack.up()
        result = asyncio.run(run(args, stack))
    finally:
        if (folder / "stack" / "stack.env").exists():
            stack.run("down")
        shutil.rmtree(folder, ignore_errors=True)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
