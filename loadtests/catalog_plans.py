"""Plans and latencies of the catalog list query at scale.

    DATABASE_URL=... python -m server seed-demo --products 1000000
    DATABASE_URL=... python -m loadtests.catalog_plans [--runs 25] [--plans] [--markdown FILE]

For every sort of GET /api/products, without a filter and with each filter (a
common and a rare search term, a price floor, a price ceiling, a narrow price
range, in_stock) and for a second page (cursor), it builds the statement exactly as
the service does (db.products.list_query), prints its EXPLAIN (ANALYZE, BUFFERS)
plan with --plans, checks that the plan uses an index and never sorts or scans the
whole table, and measures the median and p95 latency over --runs executions.
Exits 1 if a plan reads the table sequentially or sorts it whole.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from db.products import SORTS, ListFilters, list_query

FILTERS: dict[str, ListFilters] = {
    "none": ListFilters(),
    "q=steel (common)": ListFilters(q="steel"),
    "q=oak chair 123 (rare)": ListFilters(q="oak chair 123"),
    "min_price=20000": ListFilters(min_price=20_000),
    "max_price=1500": ListFilters(max_price=1_500),
    "price 4000..4010": ListFilters(min_price=4_000, max_price=4_010),
    "in_stock=true": ListFilters(in_stock=True),
}
PAGE = 20


@dataclass
class Measured:
    sort: str
    filters: str
    median_ms: float
    p95_ms: float
    rows: int
    access: str
    plan: str
    ok: bool


def _access_paths(plan: str) -> str:
    found = re.findall(
        r"((?:Index Only Scan|Index Scan Backward|Index Scan|Bitmap Index Scan|Seq Scan) (?:using \w+ )?on \w+)", plan
    )
    return "; ".join(dict.fromkeys(found))


_PLAN_NODE = re.compile(r"^\s*(?:->  )?(\w[\w ]*?)  \(")
_SORT_INDEX_WALK = re.compile(r"^Index (?:Only )?Scan(?: Backward)? using products_(?:created_at|price|name)_idx")


def _acceptable(plan: str) -> bool:
    """No sequential scan, and no sort over a walk of a sort index.

    A sort is fine over the rows an index found (a search's matches), never over the
    table: a Sort whose input is a walk of one of the sort indexes would be one. In the
    text plan a node's first child is the next node line (its detail lines, such as
    `Sort Key:`, come between).
    """
    nodes = [m.group(1) for line in plan.splitlines() if (m := _PLAN_NODE.match(line))]
    if any(node.startswith("Seq Scan") for node in nodes):
        return False
    return not any(node.endswith("Sort") and _SORT_INDEX_WALK.match(child) for node, child in itertools.pairwise(nodes))


async def _measure(
    conn: asyncpg.Connection, sort: str, label: str, filters: ListFilters, after: Any, runs: int
) -> Measured:
    query, args = list_query(SORTS[sort], filters, after, PAGE + 1)
    plan_rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + query, *args)
    plan = "\n".join(r[0] for r in plan_rows)
    await conn.fetch(query, *args)  # warm
    timings = []
    rows: list[Any] = []
    for _ in range(runs):
        started = time.perf_counter()
        rows = await conn.fetch(query, *args)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return Measured(
        sort=sort,
        filters=label,
        median_ms=statistics.median(timings),
        p95_ms=timings[max(0, int(len(timings) * 0.95) - 1)],
        rows=len(rows),
        access=_access_paths(plan),
        plan=plan,
        ok=_acceptable(plan),
    )


async def run(dsn: str, runs: int, show_plans: bool) -> list[Measured]:
    conn = await asyncpg.connect(dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM products WHERE deleted_at IS NULL")
        print(f"products: {count:,}", file=sys.stderr)
        results = []
        for sort in SORTS:
            for label, filters in FILTERS.items():
                results.append(await _measure(conn, sort, label, filters, None, runs))
            # The second page of the unfiltered list: the keyset condition at work.
            first, args = list_query(SORTS[sort], ListFilters(), None, PAGE + 1)
            last = (await conn.fetch(first, *args))[PAGE - 1]
            column = SORTS[sort].column
            results.append(
                await _measure(conn, sort, "none, page 2 (cursor)", ListFilters(), (last[column], last["id"]), runs)
            )
        if show_plans:
            for m in results:
                print(f"\n### sort={m.sort} filter={m.filters}\n{m.plan}")
        return results
    finally:
        await conn.close()


def markdown(results: list[Measured]) -> str:
    lines = [
        "| sort | filter | median ms | p95 ms | rows | index used | whole-table scan or sort |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for m in results:
        lines.append(
            f"| `{m.sort}` | {m.filters} | {m.median_ms:.2f} | {m.p95_ms:.2f} | {m.rows} | {m.access} | "
            f"{'no' if m.ok else '**yes**'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.catalog_plans", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), help="default: DATABASE_URL")
    parser.add_argument("--runs", type=int, default=25, help="executions measured per query")
    parser.add_argument("--plans", action="store_true", help="print every EXPLAIN (ANALYZE, BUFFERS) plan")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn or set DATABASE_URL")
    results = asyncio.run(run(args.dsn, args.runs, args.plans))
    table = markdown(results)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(table + "\n")
    bad = [m for m in results if not m.ok]
    if bad:
        print(f"{len(bad)} plan(s) scan or sort the whole table", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
