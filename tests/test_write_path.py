"""The write-path benchmark runs the service's own statement: its pgbench script, with
pgbench's variables filled in, places an order on the real schema (a parameter the
statement gained and the script left unfilled would make every transaction fail)."""

from __future__ import annotations

import asyncpg

from loadtests.write_path import pgbench_script
from tests.conftest import make_config
from tests.helpers import Api


async def test_the_pgbench_script_places_an_order(api: Api, db: asyncpg.Connection, clean_db: str) -> None:
    product, user = await api.product(stock=5), await api.customer()
    statement = pgbench_script(make_config(clean_db)).splitlines()[-1]
    statement = statement.replace(":uid", str(user.id)).replace(":pid", str(product["id"]))
    row = await db.fetchrow(statement)
    assert row is not None and row["refusal"] is None and row["user_id"] == user.id
    assert await db.fetchval("SELECT stock FROM products WHERE id = $1", product["id"]) == 4
