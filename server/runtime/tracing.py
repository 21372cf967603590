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
import random
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, StaticSampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, Tracer

TRACER_NAME = "storefront"

# The trace id a span about to start takes (see Tracing.sampled_root).
_PRESET_TRACE_ID: ContextVar[int | None] = ContextVar("preset_trace_id", default=None)


class _PresetTraceIds(RandomIdGenerator):
    """Random ids, but the trace id the request's sampling was decided on, when preset."""

    def generate_trace_id(self) -> int:
        preset = _PRESET_TRACE_ID.get()
        return super().generate_trace_id() if preset is None else preset


class _HashedOnce(Resource):
    """The SDK's resource, hashed once. The OTLP encoder groups each exported span by
    its resource, a dict lookup, and the SDK's hash serialises every attribute to JSON
    on each call: about 5 us a span, a quarter of the encoder's time. A resource never
    changes once made, so neither does its hash."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


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


# The context of a request whose trace is dropped: a current span that records nothing
# and is not sampled (so every span made under it is dropped by the parent-based
# sampler), and no instrumentation (asyncpg's makes no span per statement). The same for
# every such request: nothing of it is exported or logged.
UNSAMPLED = otel_context.set_value(
    _SUPPRESS_INSTRUMENTATION_KEY,
    True,
    trace.set_span_in_context(
        NonRecordingSpan(
            SpanContext(trace_id=1, span_id=1, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT))
        )
    ),
)


def root_sampling(sampler: Sampler, draw: Callable[[int], int] = random.getrandbits) -> Callable[[str], int | None]:
    """A function that draws the trace id of a new root span (no parent) named as it
    is given, and returns the id when `sampler` keeps the span, None when it drops it.

    Ids are drawn as the SDK's RandomIdGenerator draws them (`draw(128)`). For the
    SDK's own samplers (what OTEL_TRACES_SAMPLER chooses) the decision is the test they
    make, without the call: a root span under ParentBased goes to its root sampler,
    TraceIdRatioBased compares the id's low 64 bits with its bound, a static one always
    answers the same. Asking the sampler costs ~5 us (argument binding, a
    SamplingResult, the parent lookup) on every request, most of which it drops; the
    test costs a fraction of one, and draw and test are one call. Any other sampler is
    asked. Exact classes only: a subclass may decide otherwise (tests/test_tracing.py
    checks the tests against the samplers). 0 is not a valid trace id: that draw (one
    in 2**128) is dropped."""
    root = sampler
    if type(root).should_sample is ParentBased.should_sample:
        root = root._root  # type: ignore[attr-defined]  # where ParentBased sends a span with no parent
    if type(root).should_sample is TraceIdRatioBased.should_sample:
        bound, low_bits = root.bound, TraceIdRatioBased.TRACE_ID_LIMIT  # type: ignore[attr-defined]

        def by_ratio(_name: str) -> int | None:
            trace_id = draw(128)
            return trace_id if trace_id & low_bits < bound and trace_id else None

        return by_ratio
    if type(root).should_sample is StaticSampler.should_sample:
        if root._decision is not Decision.RECORD_AND_SAMPLE:  # type: ignore[attr-defined]
            return lambda _name: None

        def always(_name: str) -> int | None:
            return draw(128) or None

        return always

    def asked(name: str) -> int | None:
        trace_id = draw(128)
        kept = sampler.should_sample(None, trace_id, name).decision is Decision.RECORD_AND_SAMPLE
        return trace_id if kept and trace_id else None

    return asked


class Tracing:
    """A tracer provider for one worker, and the asyncpg instrumentation tied to it.

    A request's trace is decided before any span is made (`sampled_root`): the sampler
    is asked with the trace id the request's span would take. One it keeps starts with
    that id, so the SDK's own sampling agrees; one it drops runs in `unsampled`, a
    context whose span records nothing and in which instrumentation is suppressed, so
    that the dropped majority costs a test of a random number and a context switch
    instead of a span, its attributes and one span per SQL statement."""

    def __init__(self, processor: SpanProcessor) -> None:
        # Resource and sampler from the OTEL_* variables.
        self.provider = TracerProvider(resource=_HashedOnce(Resource.create()), id_generator=_PresetTraceIds())
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(TRACER_NAME)
        # The trace id of a new root span `name` that the sampler keeps; None when it
        # drops it.
        self.sampled_root = root_sampling(self.provider.sampler)
        self._asyncpg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        self._asyncpg.instrument(tracer_provider=self.provider)

    @staticmethod
    def preset(trace_id: int) -> object:
        """Make the next span started in this context take `trace_id`; returns what
        `unpreset` takes."""
        return _PRESET_TRACE_ID.set(trace_id)

    @staticmethod
    def unpreset(token: object) -> None:
        _PRESET_TRACE_ID.reset(token)  # type: ignore[arg-type]

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
    """The id of the trace being recorded in this context (32 hex digits), if any: a
    trace that is not sampled exports nothing, so no log line names it."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else None


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
