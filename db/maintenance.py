"""Keeping planner statistics up to date while tables grow fast."""

from __future__ import annotations

from db.pool import Database

# Tables that grow with traffic, and the statistics PostgreSQL plans them with.
GROWING_TABLES = (
    "users", "products", "orders", "order_items", "payments", "idempotency_keys",
    "events", "webhook_deliveries", "webhook_attempts",
)  # fmt: skip

# Tables now holding more than twice (and over `minimum` rows more than) what their
# planner statistics say. reltuples is -1 for a table never analyzed: then the
# planner assumes a modest size, which is right for a young table.
_GROWN = """
SELECT s.relname
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY($1::text[])
  AND c.reltuples >= 0 AND s.n_live_tup > 2 * c.reltuples + $2
"""


async def analyze_grown_tables(db: Database, minimum: int = 100) -> list[str]:
    """ANALYZE every growing table that has outgrown its statistics; returns them.

    Cached plans (of our statements and of the foreign-key checks PostgreSQL runs on
    every insert) are made with the statistics of their time: a table analyzed
    while empty is planned as empty, and its lookups stay sequential scans while it
    grows, until autovacuum analyzes it again (up to a minute or more later). Under
    load on a young database that is most of the database's work. An ANALYZE
    invalidates those plans.

    A young table is analyzed early (past 100 rows, then past twice that and 100 more:
    about 300, 700, 1,500...): a few ANALYZEs of small tables, where with a first step
    of 1,000 rows each payment read a few thousand rows by sequential scans until the
    table got there.
    """
    grown = [r["relname"] for r in await db.fetch(_GROWN, list(GROWING_TABLES), minimum)]
    for table in grown:
        # Every worker of every replica runs this job: SKIP_LOCKED lets the first one
        # analyze a table while the others pass, instead of queueing behind it. (A
        # role that does not own a table gets a warning and nothing done, no error.)
        await db.execute(f'ANALYZE (SKIP_LOCKED) "{table}"')
    return grown
