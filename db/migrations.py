"""Schema migrations: the numbered SQL files in `sql/`, applied in order.

Each file runs in its own transaction together with the row that records it, so a
failed migration leaves no trace and is retried at the next start. That transaction
first takes an advisory lock, so concurrent starters (several workers or replicas) wait
for each other: the first applies, the others find it recorded. Transaction-scoped locks
and no prepared statements: the connection may go through PgBouncer in transaction
pooling, where neither a session lock nor a prepared statement outlives a transaction.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# An arbitrary constant that names "the storefront schema" among advisory locks.
_LOCK_KEY = 0x5707_EF00
_FILE_PATTERN = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_LOCK = "SELECT pg_advisory_xact_lock($1)"
_CHECKSUM = "SELECT checksum FROM schema_migrations WHERE version = $1"
_RECORD = "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)"


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sql_dir.iterdir():
        if _FILE_PATTERN.match(path.name):
            found.append(Migration(path.stem, path))
    return sorted(found, key=lambda m: m.version)


async def apply_pending(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        return await _apply(conn, discover(sql_dir))
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    done = []
    for migration in migrations:
        async with conn.transaction():
            await conn.execute(_LOCK, _LOCK_KEY)
            await conn.execute(_CREATE_LEDGER)
            recorded = await conn.fetchval(_CHECKSUM, migration.version)
            if recorded is None:
                await conn.execute(migration.sql)
                await conn.execute(_RECORD, migration.version, migration.checksum)
        if recorded is not None:
            if recorded != migration.checksum:
                log.warning(
                    "migration changed after it was applied; it is not re-run",
                    extra={"migration": migration.version},
                )
            continue
        log.info("migration applied", extra={"migration": migration.version})
        done.append(migration.version)
    return done
