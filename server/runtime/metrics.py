"""Prometheus metrics.

With several workers (WORKERS > 1) the parent sets PROMETHEUS_MULTIPROC_DIR and
every worker writes its samples there; `/metrics` (served by whichever worker gets
the scrape) then adds them all up. Gauges that describe a worker's state (its pool,
its actors) are refreshed by each worker every few seconds and summed over live
workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if multiprocess_dir() is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from the request reaching the app to its response being ready.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pool_size = Gauge(
            "db_pool_connections", "Open connections in the pool.", registry=r, multiprocess_mode="livesum"
        )
        self.pool_idle = Gauge(
            "db_pool_idle_connections", "Open connections not in use.", registry=r, multiprocess_mode="livesum"
        )
        self.pool_in_use = Gauge(
            "db_pool_in_use_connections", "Connections lent to requests.", registry=r, multiprocess_mode="livesum"
        )
        self.pool_max = Gauge(
            "db_pool_max_connections", "Pool size limit (DB_POOL_MAX_SIZE).", registry=r, multiprocess_mode="livesum"
        )
        self.pool_waiting = Gauge(
            "db_pool_waiting_requests",
            "Requests and order actors waiting in line for a pooled connection.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_waiting_new = Gauge(
            "db_pool_waiting_new_requests",
            "New requests waiting in line for a pooled connection (part of db_pool_waiting_requests): shed with "
            "503 once the oldest has waited DB_POOL_SHED_AFTER; order actors and the worker's own jobs are never shed.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_wait = Histogram(
            "db_pool_acquire_wait_seconds",
            "Time requests that found every pooled connection busy waited for one.",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.actors_live = Gauge("order_actors_live", "Order actors alive.", registry=r, multiprocess_mode="livesum")
        self.mailbox_depth = Gauge(
            "order_actor_mailbox_depth",
            "Commands waiting in order actors' mailboxes (all actors).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.mailbox_rejections = Counter(
            "order_actor_rejections", "Commands refused: 503 (mailbox, actors), 429 (user).", ["reason"], registry=r
        )
        self.actor_crashes = Counter("order_actor_crashes", "Order actors that crashed.", registry=r)
        self.order_batch_size = Histogram(
            "order_batch_orders",
            "Orders of one product placed together in one transaction (batches of two or more).",
            buckets=(2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.payments = Counter("payments", "Payment attempts by outcome.", ["outcome"], registry=r)
        self.refunds = Counter(
            "refunds",
            "Refunds by outcome (succeeded, failed, unknown: left to reconciliation).",
            ["outcome"],
            registry=r,
        )
        self.provider_calls = Counter(
            "payment_provider_calls",
            "Calls to an outside payment provider (Stripe), each try counted, by operation and outcome (ok, "
            "card_error, invalid_request, timeout, rate_limited, connection_error, server_error, conflict, error).",
            ["provider", "operation", "outcome"],
            registry=r,
        )
        self.provider_events = Counter(
            "payment_provider_events",
            "Webhook events from the payment provider: received (signature valid), rejected (missing, wrong or "
            "stale signature), ignored (a type not used), unchanged (its payment or refund already as it says), "
            "duplicate (handled before), handled (it changed a payment or refund), mismatched (signed, but its amount "
            "or currency is not its payment's: nothing changed, logged as an error).",
            ["outcome"],
            registry=r,
        )
        self.reconciliations = Counter(
            "payment_reconciliations",
            "Payments and refunds the reconciler asked the provider about: settled, unanswered (retried later), "
            "cancelled (a payment waiting for its customer whose order ended).",
            ["kind", "outcome"],
            registry=r,
        )
        self.order_transitions = Counter(
            "order_transitions", "Order status changes.", ["from_status", "to_status"], registry=r
        )
        self.webhook_deliveries = Counter(
            "webhook_delivery_attempts",
            "Webhook delivery attempts by outcome (succeeded, retried, failed for good).",
            ["outcome"],
            registry=r,
        )
        self.webhook_events_held_back = Counter(
            "webhook_events_held_back",
            "Delivery turns that found committed events held back by an older transaction still in flight "
            "(anywhere on the database server): a long transaction stalls every webhook.",
            registry=r,
        )
        self.webhook_outbox_lag = Gauge(
            "webhook_outbox_lag_seconds",
            "Age of the oldest event not yet delivered to every webhook it is owed to.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.webhook_pending = Gauge(
            "webhook_pending_deliveries",
            "Webhook deliveries waiting to be sent or retried (all queues).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.webhook_in_flight = Gauge(
            "webhook_in_flight_deliveries", "Webhook deliveries being sent.", registry=r, multiprocess_mode="livesum"
        )
        self.webhook_actors_live = Gauge(
            "webhook_actors_live", "Webhook delivery queue actors alive.", registry=r, multiprocess_mode="livesum"
        )
        self.catalog_cache_hits = Counter(
            "catalog_cache_hits", "Catalog reads answered from the in-process cache.", ["kind"], registry=r
        )
        self.catalog_cache_misses = Counter(
            "catalog_cache_misses",
            "Catalog reads the cache could not answer (absent, or the cache not serving).",
            ["kind"],
            registry=r,
        )
        self.catalog_cache_evictions = Counter(
            "catalog_cache_evictions", "Catalog cache entries dropped to stay within its bytes.", registry=r
        )
        self.catalog_cache_bytes = Gauge(
            "catalog_cache_bytes", "Memory held by the catalog cache.", registry=r, multiprocess_mode="livesum"
        )
        self.catalog_cache_serving = Gauge(
            "catalog_cache_serving",
            "Workers whose catalog cache serves (its change watch is up to date).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.catalog_reads = Counter(
            "catalog_reads",
            "Catalog reads made on a database (cache misses and fresh reads), by target: "
            "primary or standby (DATABASE_READ_URL).",
            ["target"],
            registry=r,
        )
        self.catalog_read_batch_size = Histogram(
            "catalog_read_batch_products",
            "Products that missed the catalog cache read together in one statement (batches of two or more).",
            buckets=(2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.token_check_batch_size = Histogram(
            "token_check_batch_requests",
            "Requests whose tokens were checked together in one statement (batches of two or more).",
            buckets=(2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.count_catalog_read = {target: self.catalog_reads.labels(target).inc for target in ("primary", "standby")}
        self.standby_lag = Gauge(
            "standby_lag_seconds",
            "How far behind the primary the standby was last seen (+Inf: unreachable or not a standby; "
            "the largest over live workers).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.refreshes = Counter(
            "session_refreshes",
            "Refresh-token exchanges by outcome (rotated, reuse_detected, rejected).",
            ["outcome"],
            registry=r,
        )
        self.password_resets = Counter(
            "password_resets", "Password resets by stage (requested, confirmed, rejected).", ["outcome"], registry=r
        )
        self._request_children: dict[tuple[str, str, int], Callable[[float], None]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One latency observation; the histogram's _count is the request count (a
        separate counter would cost another locked increment per request)."""
        key = (route, method, status)
        observe = self._request_children.get(key)
        if observe is None:
            observe = self._request_children[key] = self.latency.labels(route, method, str(status)).observe
        observe(seconds)

    def order_transition(self, from_status: str, to_status: str, count: int = 1) -> None:
        self.order_transitions.labels(from_status, to_status).inc(count)

    def render(self) -> bytes:
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
