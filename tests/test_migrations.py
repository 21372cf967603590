"""The schema runner: numbered migrations once each, stored functions from their files."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from db import migrations
from tests.helpers import ROOT


@pytest.fixture
def sql_dir(tmp_path: Path) -> Path:
    (tmp_path / "functions").mkdir()
    (tmp_path / "001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);\n")
    _define(tmp_path, "answer.sql", "CREATE OR REPLACE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 1';\n")
    return tmp_path


@pytest.fixture
async def conn(empty_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(empty_database)
    try:
        yield connection
    finally:
        await connection.close()


def _define(sql_dir: Path, name: str, text: str) -> None:
    (sql_dir / "functions" / name).write_text(text)


async def _functions(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT oid::regprocedure::text AS f FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1"
    )
    return [r["f"] for r in rows]


async def test_migrations_then_functions_are_applied_once(empty_database: str, sql_dir: Path) -> None:
    assert await migrations.apply_pending(empty_database, sql_dir) == ["001_things", "functions"]
    assert await migrations.apply_pending(empty_database, sql_dir) == []


async def test_a_changed_function_file_replaces_the_function(
    empty_database: str, sql_dir: Path, conn: asyncpg.Connection
) -> None:
    await migrations.apply_pending(empty_database, sql_dir)
    _define(sql_dir, "answer.sql", "CREATE OR REPLACE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 2';\n")
    assert await migrations.apply_pending(empty_database, sql_dir) == ["functions"]
    assert await conn.fetchval("SELECT answer()") == 2


async def test_a_changed_signature_and_return_type_need_no_migration(
    empty_database: str, sql_dir: Path, conn: asyncpg.Connection
) -> None:
    await migrations.apply_pending(empty_database, sql_dir)
    _define(
        sql_dir, "answer.sql", "CREATE OR REPLACE FUNCTION answer(p text) RETURNS text LANGUAGE sql AS 'SELECT p';\n"
    )
    await migrations.apply_pending(empty_database, sql_dir)
    assert await _functions(conn) == ["answer(text)"]


async def test_a_function_removed_from_the_files_is_dropped(
    empty_database: str, sql_dir: Path, conn: asyncpg.Connection
) -> None:
    _define(sql_dir, "extra.sql", "CREATE OR REPLACE FUNCTION extra() RETURNS int LANGUAGE sql AS 'SELECT 3';\n")
    await migrations.apply_pending(empty_database, sql_dir)
    (sql_dir / "functions" / "extra.sql").unlink()
    await migrations.apply_pending(empty_database, sql_dir)
    assert await _functions(conn) == ["answer()"]


async def test_a_trigger_is_made_again_with_its_function(
    empty_database: str, sql_dir: Path, conn: asyncpg.Connection
) -> None:
    trigger = """
CREATE OR REPLACE FUNCTION things_double() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.id := NEW.id * {factor}; RETURN NEW; END $$;
CREATE OR REPLACE TRIGGER things_double BEFORE INSERT ON things FOR EACH ROW EXECUTE FUNCTION things_double();
"""
    _define(sql_dir, "things.sql", trigger.format(factor=2))
    await migrations.apply_pending(empty_database, sql_dir)
    _define(sql_dir, "things.sql", trigger.format(factor=3))
    await migrations.apply_pending(empty_database, sql_dir)
    assert await conn.fetchval("INSERT INTO things VALUES (5) RETURNING id") == 15


async def test_a_function_a_table_depends_on_is_refused_and_nothing_changes(
    empty_database: str, sql_dir: Path, conn: asyncpg.Connection
) -> None:
    await migrations.apply_pending(empty_database, sql_dir)
    (sql_dir / "002_defaults.sql").write_text("CREATE TABLE numbered (n int DEFAULT answer());\n")
    with pytest.raises(RuntimeError, match=r"answer\(\)"):
        await migrations.apply_pending(empty_database, sql_dir)
    assert await conn.fetchval("SELECT to_regclass('numbered')") is None


async def test_an_edited_migration_is_reported_not_run_again(
    empty_database: str, sql_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await migrations.apply_pending(empty_database, sql_dir)
    (sql_dir / "001_things.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY);\n")
    with caplog.at_level(logging.WARNING, logger="db.migrations"):
        assert await migrations.apply_pending(empty_database, sql_dir) == []
    assert [r.migration for r in caplog.records] == ["001_things"]  # type: ignore[attr-defined]


def test_each_stored_function_has_one_definition_and_no_migration_defines_one() -> None:
    names = [
        name
        for path in (ROOT / "sql" / "functions").glob("*.sql")
        for name in re.findall(r"^CREATE OR REPLACE FUNCTION\s+(\w+)\s*\(", path.read_text(), re.MULTILINE)
    ]
    assert names and len(names) == len(set(names))
    for path in (ROOT / "sql").glob("*.sql"):
        assert not re.search(r"CREATE (OR REPLACE )?(FUNCTION|TRIGGER)", path.read_text()), path.name
