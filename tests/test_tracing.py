"""Tracing: one request's trace holds its route, connection waits, SQL statements,
the order's mailbox wait and the provider call, continues the caller's
`traceparent`, and its id is on every log line the request writes."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    Decision,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

from server.app import Options, create_app
from server.runtime.config import Config
from server.runtime.logs import JsonFormatter
from server.runtime.tracing import exporter_from_environment, root_sampling, start
from tests.conftest import JWT_SECRET
from tests.helpers import Api
from tests.test_webhooks import FAST_DELIVERY, add_webhook
from tests.webhook_receiver import Receiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
# The caller's context is believed only when a setting says so (or from a trusted proxy).
TRUSTING = {"access_log": True, **FAST_DELIVERY, "otel_trust_incoming_context": True}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def app(config: Config, exporter: InMemorySpanExporter) -> web.Application:
    options = Options(
        dsn=config.database_url or "", jwt_secret=JWT_SECRET, span_processor=SimpleSpanProcessor(exporter)
    )
    return create_app(config, options)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"access_log": True, **FAST_DELIVERY}


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The service's JSON log lines, as production writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context and format(s.context.trace_id, "032x") == trace_id]


@pytest.mark.parametrize("config_overrides", [TRUSTING])
async def test_a_payment_is_one_trace_under_the_callers_traceparent(api: Api, exporter: InMemorySpanExporter) -> None:
    customer, product = await api.customer(), await api.product(stock=5)
    order = await api.order(customer, (product["id"], 1))
    exporter.clear()

    body = {"order_id": order.json["id"], "payment_method": {"type": "card", "token": "tok_visa"}}
    reply = await api.call(
        "POST", "/api/payments", json=body, token=customer.token, headers={"traceparent": TRACEPARENT}
    )
    assert reply.status == 201, reply

    spans = _spans_of(exporter, TRACE_ID)
    names = [span.name for span in spans]
    route = next(span for span in spans if span.name == "POST /api/payments")
    assert route.parent is not None and format(route.parent.span_id, "016x") == CALLER_SPAN_ID
    assert route.attributes is not None and route.attributes["http.response.status_code"] == 201
    assert "db.pool.acquire" in names
    assert "order.mailbox_wait" in names
    assert "payment_provider.charge" in names
    sql = [span for span in spans if span.attributes and span.attributes.get("db.system") == "postgresql"]
    assert len(sql) >= 3  # token check, the payment's two transactions
    # Everything of the request hangs under its route span.
    span_ids = {span.context.span_id for span in spans if span.context}
    assert all(span.parent is not None and span.parent.span_id in span_ids for span in spans if span is not route)


@pytest.mark.parametrize("config_overrides", [TRUSTING])
async def test_the_requests_log_lines_carry_its_trace_id(api: Api, json_log: io.StringIO) -> None:
    reply = await api.call("GET", "/api/products", headers={"traceparent": TRACEPARENT, "X-Request-ID": "traced-1"})
    assert reply.status == 200
    lines = [orjson.loads(line) for line in json_log.getvalue().splitlines()]
    of_request = [line for line in lines if line.get("request_id") == "traced-1"]
    assert of_request, lines
    assert all(line["trace_id"] == TRACE_ID for line in of_request)


async def test_a_request_without_traceparent_starts_a_trace_of_its_own(
    api: Api, exporter: InMemorySpanExporter
) -> None:
    await api.call("GET", "/api/products")
    (route,) = [span for span in exporter.get_finished_spans() if span.name == "GET /api/products"]
    assert route.parent is None


async def test_a_clients_traceparent_is_not_continued_by_default(api: Api, exporter: InMemorySpanExporter) -> None:
    reply = await api.call("GET", "/api/products", headers={"traceparent": TRACEPARENT})
    assert reply.status == 200
    assert _spans_of(exporter, TRACE_ID) == []
    (route,) = [span for span in exporter.get_finished_spans() if span.name == "GET /api/products"]
    assert route.parent is None  # a trace of its own


@pytest.mark.parametrize("config_overrides", [{"trusted_proxies": "127.0.0.1"}])
async def test_a_traceparent_from_a_trusted_proxy_is_continued(api: Api, exporter: InMemorySpanExporter) -> None:
    reply = await api.call("GET", "/api/products", headers={"traceparent": TRACEPARENT})
    assert reply.status == 200
    (route,) = [span for span in _spans_of(exporter, TRACE_ID) if span.name == "GET /api/products"]
    assert route.parent is not None and format(route.parent.span_id, "016x") == CALLER_SPAN_ID


async def test_with_sampling_at_zero_a_clients_sampled_traceparent_exports_nothing(
    aiohttp_client: Any, config: Config, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK reads its sampler from the environment when the provider is made.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    options = Options(
        dsn=config.database_url or "", jwt_secret=JWT_SECRET, span_processor=SimpleSpanProcessor(exporter)
    )
    api = Api(await aiohttp_client(create_app(config, options)))
    for _ in range(5):
        reply = await api.call("GET", "/api/products", headers={"traceparent": TRACEPARENT})
        assert reply.status == 200
    assert exporter.get_finished_spans() == ()


async def _sampled_api(
    aiohttp_client: Any, config: Config, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, ratio: str
) -> Api:
    # The SDK reads its sampler from the environment when the provider is made.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    options = Options(
        dsn=config.database_url or "", jwt_secret=JWT_SECRET, span_processor=SimpleSpanProcessor(exporter)
    )
    return Api(await aiohttp_client(create_app(config, options)))


async def test_a_request_the_sampler_drops_makes_no_span_and_logs_no_trace_id(
    aiohttp_client: Any,
    config: Config,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
    json_log: io.StringIO,
) -> None:
    """Dropped before the SDK: not even the SQL statements' instrumentation runs."""
    api = await _sampled_api(aiohttp_client, config, exporter, monkeypatch, "0")
    customer = await api.customer()
    product = await api.product()
    reply = await api.order(customer, (product["id"], 1))
    assert reply.status == 201
    assert exporter.get_finished_spans() == ()
    lines = [orjson.loads(line) for line in json_log.getvalue().splitlines()]
    assert lines and not any("trace_id" in line for line in lines)


async def test_a_request_the_sampler_keeps_is_a_whole_trace_at_the_configured_ratio(
    aiohttp_client: Any, config: Config, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace id the decision was made on is the one the request's span takes, so
    the SDK's own sampling agrees: half of the requests (not a quarter) are traced, each
    with its SQL statements."""
    api = await _sampled_api(aiohttp_client, config, exporter, monkeypatch, "0.5")
    for _ in range(400):
        assert (await api.call("GET", "/readyz")).status == 200
    roots = [span for span in exporter.get_finished_spans() if span.name == "GET /readyz"]
    assert 140 <= len(roots) <= 260, len(roots)  # 200 expected; 6 standard deviations either side
    children = {span.context.trace_id for span in exporter.get_finished_spans() if span.parent is not None}
    assert all(root.context.trace_id in children for root in roots)  # each with its SQL statement


@pytest.mark.parametrize("config_overrides", [TRUSTING])
async def test_a_continued_trace_after_a_dropped_request_on_its_connection_keeps_its_statements(
    aiohttp_client: Any, config: Config, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dropped request's context is attached and never detached: the next request's
    trace on that keep-alive connection must not inherit it."""
    api = await _sampled_api(aiohttp_client, config, exporter, monkeypatch, "0")
    assert (await api.call("GET", "/readyz")).status == 200  # dropped
    assert (await api.call("GET", "/readyz", headers={"traceparent": TRACEPARENT})).status == 200
    assert (await api.call("GET", "/readyz")).status == 200  # dropped again
    spans = exporter.get_finished_spans()
    assert {format(span.context.trace_id, "032x") for span in spans if span.context} == {TRACE_ID}
    assert any(span.attributes and span.attributes.get("db.system") == "postgresql" for span in spans)


class _DropsHealthChecks(TraceIdRatioBased):
    """A sampler of the shop's own that decides on more than the trace id."""

    def should_sample(self, parent_context: Any, trace_id: int, name: str, *args: Any, **kwargs: Any) -> SamplingResult:
        if name.endswith("/healthz"):
            return SamplingResult(Decision.DROP)
        return super().should_sample(parent_context, trace_id, name, *args, **kwargs)


@pytest.mark.parametrize(
    "sampler",
    [ParentBasedTraceIdRatio(0.1), TraceIdRatioBased(0.5), ALWAYS_ON, ALWAYS_OFF, DEFAULT_ON, DEFAULT_OFF,
     _DropsHealthChecks(0.5)],
    ids=["parentbased_ratio", "ratio", "always_on", "always_off", "parentbased_on", "parentbased_off", "custom"],
)  # fmt: skip
def test_the_root_decision_is_the_samplers_own(sampler: Sampler) -> None:
    ids, drawn = RandomIdGenerator(), []

    def draw(bits: int) -> int:
        assert bits == 128
        drawn.append(ids.generate_trace_id())
        return drawn[-1]

    sampled_root = root_sampling(sampler, draw)
    for name in ("GET /api/products/{id}", "GET /healthz"):
        for _ in range(2_000):
            before = len(drawn)
            trace_id = sampled_root(name)
            # A sampler that drops everything needs no draw: any id is dropped.
            asked = drawn[-1] if len(drawn) > before else ids.generate_trace_id()
            kept = sampler.should_sample(None, asked, name).decision is Decision.RECORD_AND_SAMPLE
            assert trace_id == (asked if kept else None), (name, format(asked, "032x"))


def test_tracing_is_off_unless_the_environment_names_an_exporter() -> None:
    assert exporter_from_environment({}) is None
    assert exporter_from_environment({"OTEL_SERVICE_NAME": "storefront"}) is None
    assert (
        exporter_from_environment(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}
        )
        is None
    )
    assert exporter_from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) is not None
    assert exporter_from_environment({"OTEL_TRACES_EXPORTER": "console"}) is not None


def test_spans_carry_the_environments_resource_hashed_as_the_sdk_hashes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The exporter groups spans by resource, in a dict: equal resources must hash alike.
    monkeypatch.setenv("OTEL_SERVICE_NAME", "storefront-test")
    exporter = InMemorySpanExporter()
    tracing = start(SimpleSpanProcessor(exporter))
    assert tracing is not None
    try:
        with tracing.tracer.start_as_current_span("GET /healthz"):
            pass
    finally:
        tracing.close()
    [span] = exporter.get_finished_spans()
    assert span.resource.attributes["service.name"] == "storefront-test"
    assert span.resource == Resource.create()
    assert hash(span.resource) == hash(Resource.create())


async def test_a_webhook_delivery_is_a_client_span_with_its_answer(api: Api, exporter: InMemorySpanExporter) -> None:
    receiver = await Receiver().start()
    try:
        await add_webhook(api, receiver.url, ["product.created"])
        await api.product(name="Traced")
        await receiver.wait_for(lambda: len(receiver.received) == 1)
    finally:
        await receiver.stop()
    for _ in range(50):  # the span ends once the outcome is back from the receiver
        sends = [span for span in exporter.get_finished_spans() if span.name == "webhook.deliver"]
        if sends:
            break
        await asyncio.sleep(0.05)
    (send,) = sends
    assert send.attributes is not None
    assert send.attributes["webhook.event_type"] == "product.created"
    assert send.attributes["http.response.status_code"] == 204  # what the receiver answers
