"""Structured logs: one JSON object per line on stdout.

Every line logged while a request is handled carries that request's id (from
`X-Request-ID` when the client sent a usable one), through a context variable that
the middleware sets, and, while tracing is on, the id of its trace; lines from
background work carry none.
"""

from __future__ import annotations

import logging
import sys
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from server.runtime.tracing import current_trace_id

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        trace_id = current_trace_id()
        if trace_id is not None:
            entry["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return orjson.dumps(entry, default=str).decode()


def configure(level: str, access_log: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access logger is replaced by ours (see ACCESS_LOG).
    logging.getLogger("aiohttp.access").disabled = True
    # Stripe's SDK logs every call it makes at INFO, its request and its response: an
    # access log of outbound calls, two lines a payment, so ACCESS_LOG governs it like
    # ours. The calls are counted either way (payment_provider_calls_total), and the
    # provider logs what fails.
    logging.getLogger("stripe").setLevel(logging.NOTSET if access_log else logging.WARNING)
