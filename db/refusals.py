"""Refusals: a rule said no. The one vocabulary of the stored functions' refusals and
the domain's own: a code naming the rule, and what it is about.

The stored functions answer a refusal as a jsonb document `{"code": ..., ...}` with
nothing written (sql/functions/); `refused` turns it into a `Refusal`, the one place
where database refusals are decoded. The domain raises the same type for the rules it
checks itself. The HTTP layer words each code as a problem document
(handlers/refusals.py); nothing below it speaks HTTP.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


class Refusal(Exception):
    """A rule refused the request: `code` names the rule, `about` holds what it is
    about (the order's status, the product short of stock, the seconds to wait...)."""

    def __init__(self, code: str, **about: Any) -> None:
        super().__init__(code)
        self.code = code
        self.about = about

    def __repr__(self) -> str:
        return f"Refusal({self.code!r}, {self.about!r})"


def refusal_of(row: asyncpg.Record) -> Refusal | None:
    """The Refusal `row`'s `refusal` column holds; None when it is NULL."""
    document = row["refusal"]
    if document is None:
        return None
    about = orjson.loads(document)
    return Refusal(about.pop("code"), **about)


def refused(row: asyncpg.Record) -> asyncpg.Record:
    """`row` when its `refusal` column is NULL; else the Refusal it holds, raised."""
    refusal = refusal_of(row)
    if refusal is not None:
        raise refusal
    return row
