"""Tracing with OpenTelemetry, configured only through the standard `OTEL_*`
environment variables, and off (no tracer, no per-request cost) when none of them
names an exporter.

On: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) sends spans
over OTLP/HTTP; `OTEL_TRACES_EXPORTER=console` prints them instead (`none` turns
tracing off whatever else is set). The SDK itself reads the rest:
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
`OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio` and `0.1`), the
exporter's headers and timeouts.

What a trace holds: a server span per request (named by route template, child of an
incoming `traceparent`), the wait for a pooled connection (`db.pool.acquire`), each
SQL statement (asyncpg's instrumentation), the wait in an order's mailbox
(`order.mailbox_wait`), the provider call (`payment_provider.*`) and webhook
deliveries. Each worker process configures its own provider after it starts (the
batch exporter's thread does not survive a fork).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Tracer

TRACER_NAME = "storefront"


def exporter_from_environment(environ: Mapping[str, str]) -> SpanExporter | None:
    """The exporter the OTEL_* variables ask for; None when tracing is off."""
    chosen = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if chosen == "none":
        return None
    if chosen == "console":
        return ConsoleSpanExporter()
    if chosen in ("", "otlp") and (
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        # Imported only when used: the exporter pulls in protobuf and requests.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return None


class Tracing:
    """A tracer provider for one worker, and the asyncpg instrumentation tied to it."""

    def __init__(self, processor: SpanProcessor) -> None:
        self.provider = TracerProvider()  # resource and sampler from the OTEL_* variables
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(TRACER_NAME)
        self._asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        self._asyncpg.instrument(tracer_provider=self.provider)

    def close(self) -> None:
        self._asyncpg.uninstrument()
        self.provider.shutdown()


def start(processor: SpanProcessor | None = None, environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """Tracing for this process: with the given span processor (tests), else as the
    environment says; None when it says nothing."""
    if processor is None:
        exporter = exporter_from_environment(environ)
        if exporter is None:
            return None
        processor = BatchSpanProcessor(exporter)
    return Tracing(processor)


def current_trace_id() -> str | None:
    """The id of the trace being recorded in this context (32 hex digits), if any."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class TracedCalls:
    """Wraps an object so each of its coroutine methods runs in a client span named
    `{prefix}.{method}`: the payment provider, whatever methods its interface has."""

    def __init__(self, inner: object, tracer: Tracer, prefix: str) -> None:
        self._inner, self._tracer, self._prefix = inner, tracer, prefix

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        span_name, tracer = f"{self._prefix}.{name}", self._tracer

        async def traced(*args: Any, **kwargs: Any) -> Any:
            with tracer.start_as_current_span(span_name, kind=SpanKind.CLIENT):
                return await attribute(*args, **kwargs)

        return traced
