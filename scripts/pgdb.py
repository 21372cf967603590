#!/usr/bin/env python3
"""Create or drop a throwaway database next to a PostgreSQL URL (for the scripts).

scripts/pgdb.py create postgresql://user@host:5432/postgres NAME
scripts/pgdb.py drop   postgresql://user@host:5432/postgres NAME
"""

import asyncio
import sys

import asyncpg


async def main(action: str, server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        if action == "create":
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in {"create", "drop"}:
        sys.exit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
