"""The schema: numbered migrations, then the stored functions.

- `sql/NNN_name.sql`: tables, indexes, types and data changes, applied once each, in
  order, and never edited once applied (the ledger keeps each one's checksum and a
  changed one is reported).
- `sql/functions/*.sql`: every stored function, trigger function and trigger, each
  defined in exactly one file with `CREATE OR REPLACE`. The set is applied whenever
  its checksum changed (or a migration ran): the functions the files defined last time
  and the ones they define now are dropped, then every file runs, in name order. So a
  file is the current definition, a renamed or removed function disappears, and a
  changed signature needs no migration of its own (the idea of Flyway's repeatable
  migrations and sqitch's rework). An SQL-language function that reads a table is
  never inlined: PostgreSQL plans its query again at every call from a statement
  (once a transaction from a PL/pgSQL expression); one called from statements on a
  hot path is PL/pgSQL, which keeps its plans for the session.

Everything runs in one transaction that first takes an advisory lock, so concurrent
starters (several workers or replicas) wait for each other: the first applies, the
others find it recorded, and a failure leaves no trace (it is retried at the next
start). Transaction-scoped locks and no prepared statements: the connection may go
through PgBouncer in transaction pooling, where neither a session lock nor a prepared
statement outlives a transaction.
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
# The functions a file defines: every one is written `CREATE OR REPLACE FUNCTION name(`.
_DEFINED = re.compile(r"^CREATE OR REPLACE FUNCTION\s+([a-z_][a-z0-9_]*)\s*\(", re.MULTILINE)

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS schema_functions (
    id          int         PRIMARY KEY CHECK (id = 1),
    checksum    text        NOT NULL,
    names       text[]      NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_LOCK = "SELECT pg_advisory_xact_lock($1)"
_APPLIED = "SELECT version, checksum FROM schema_migrations"
_RECORD = "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)"
_FUNCTIONS_RECORDED = "SELECT checksum, names FROM schema_functions WHERE id = 1"
_RECORD_FUNCTIONS = """
INSERT INTO schema_functions (id, checksum, names) VALUES (1, $1, $2)
ON CONFLICT (id) DO UPDATE SET checksum = excluded.checksum, names = excluded.names, applied_at = now()
"""
# Objects that depend on a function other than its triggers (a column default, an
# index, a view): dropping the function would drop them too, so the runner refuses.
_DEPENDENTS = """
SELECT p.oid::regprocedure::text AS function, d.classid::regclass::text AS kind
FROM pg_proc p JOIN pg_depend d ON d.refobjid = p.oid AND d.refclassid = 'pg_proc'::regclass
WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY($1::text[])
  AND d.deptype = 'n' AND d.classid NOT IN ('pg_trigger'::regclass, 'pg_proc'::regclass)
"""
_SIGNATURES = """
SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY($1::text[])
"""


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

    @property
    def has_statements(self) -> bool:
        """False for a migration that is only comments now (its functions moved to
        sql/functions): PostgreSQL answers an empty query with nothing to run."""
        return any(line.strip() and not line.lstrip().startswith("--") for line in self.sql.splitlines())


@dataclass(frozen=True)
class Functions:
    """The stored functions: every file of sql/functions, in name order."""

    paths: tuple[Path, ...]

    @property
    def checksum(self) -> str:
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    @property
    def names(self) -> list[str]:
        return sorted({name for path in self.paths for name in _DEFINED.findall(path.read_text(encoding="utf-8"))})


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sql_dir.iterdir():
        if _FILE_PATTERN.match(path.name):
            found.append(Migration(path.stem, path))
    return sorted(found, key=lambda m: m.version)


def functions(sql_dir: Path = SQL_DIR) -> Functions:
    return Functions(tuple(sorted((sql_dir / "functions").glob("*.sql"))))


async def apply_pending(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every migration not yet recorded, then the functions if they changed;
    returns the versions applied now (and "functions" when they were applied)."""
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        async with conn.transaction():
            await conn.execute(_LOCK, _LOCK_KEY)
            await conn.execute(_CREATE_LEDGER)
            applied = await _apply_migrations(conn, discover(sql_dir))
            if await _apply_functions(conn, functions(sql_dir), force=bool(applied)):
                applied.append("functions")
        return applied
    finally:
        await conn.close()


async def _apply_migrations(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    recorded = {r["version"]: r["checksum"] for r in await conn.fetch(_APPLIED)}
    done = []
    for migration in migrations:
        if migration.version in recorded:
            continue
        if migration.has_statements:
            await conn.execute(migration.sql)
        await conn.execute(_RECORD, migration.version, migration.checksum)
        log.info("migration applied", extra={"migration": migration.version})
        done.append(migration.version)
    # Compared after applying: a migration may re-record the checksums of older ones.
    recorded = {r["version"]: r["checksum"] for r in await conn.fetch(_APPLIED)}
    for migration in migrations:
        if recorded[migration.version] != migration.checksum:
            log.warning("migration changed after it was applied; not run again", extra={"migration": migration.version})
    return done


async def _apply_functions(conn: asyncpg.Connection, current: Functions, *, force: bool) -> bool:
    """Replace the stored functions when the files changed (or `force`); True when
    they were applied."""
    checksum, names = current.checksum, current.names
    recorded = await conn.fetchrow(_FUNCTIONS_RECORDED)
    if recorded is not None and recorded["checksum"] == checksum and not force:
        return False
    previous = list(recorded["names"]) if recorded is not None else []
    stale = sorted(set(previous) | set(names))
    dependents = await conn.fetch(_DEPENDENTS, stale)
    if dependents:
        found = ", ".join(f"{r['function']} ({r['kind']})" for r in dependents)
        raise RuntimeError(f"objects other than triggers depend on stored functions: {found}")
    for row in await conn.fetch(_SIGNATURES, stale):
        # CASCADE takes their triggers along; the files make them again.
        await conn.execute(f"DROP FUNCTION {row['signature']} CASCADE")
    # Bodies are checked when called, not when created (as pg_dump restores them): a
    # function may call one that a later file defines.
    await conn.execute("SET LOCAL check_function_bodies = off")
    for path in current.paths:
        await conn.execute(path.read_text(encoding="utf-8"))
    await conn.execute(_RECORD_FUNCTIONS, checksum, names)
    log.info("stored functions applied", extra={"functions": len(names)})
    return True
