"""The service's one configuration object, built from the environment at start.

Every setting is a field whose alias is its environment variable; the field's
description is what the README documents. A bad value stops the start with a
one-line message naming the variable (see `load`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from db.pool import PoolSettings


def _default_workers() -> int:
    # The CPUs this process may run on, not the machine's: under `taskset` or a
    # container CPU set, one worker per allowed core.
    return max(1, len(os.sched_getaffinity(0)))


class ConfigError(SystemExit):
    """A setting is invalid; the message names the variable."""


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=False)

    # --- serving -----------------------------------------------------------------
    host: str = Field("127.0.0.1", alias="HOST", description="Address to listen on.")
    port: int = Field(8080, alias="PORT", ge=0, le=65535, description="TCP port to listen on.")
    listen_backlog: int = Field(
        4096,
        alias="LISTEN_BACKLOG",
        ge=1,
        description="Connections the kernel may hold for a worker before it accepts them (capped by "
        "net.core.somaxconn). Below a burst of new connections, the excess is dropped and their "
        "clients wait seconds for TCP to retry.",
    )
    workers: int = Field(
        default_factory=_default_workers,
        alias="WORKERS",
        ge=1,
        le=256,
        description="Worker processes sharing the port with SO_REUSEPORT (default: the CPUs "
        "this process may use). 1 serves from the main process.",
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        alias="SHUTDOWN_GRACE_SECONDS",
        gt=0,
        description="On SIGTERM, how long in-flight requests and queued order commands may "
        "take to finish before the process exits.",
    )
    max_body_bytes: int = Field(
        1_048_576,
        alias="MAX_BODY_BYTES",
        ge=1024,
        description="Largest accepted request body; larger ones get 413.",
    )
    client_body_timeout_seconds: float = Field(
        30.0,
        alias="CLIENT_BODY_TIMEOUT_SECONDS",
        gt=0,
        description="A client must send a request's body within this time or gets 408.",
    )
    keepalive_timeout_seconds: float = Field(
        15.0,
        alias="KEEPALIVE_TIMEOUT_SECONDS",
        gt=0,
        description="An idle keep-alive connection is closed after this, and so is one whose "
        "client takes longer than this to send a request's headers (slow-client protection).",
    )
    trust_forwarded_for: bool = Field(
        False,
        alias="TRUST_FORWARDED_FOR",
        description="Behind one load balancer: take the client address from the right-most "
        "X-Forwarded-For entry (the one the load balancer added; entries to its left are the "
        "client's own and never trusted). Used by throttling and logs.",
    )
    trusted_proxies: str = Field(
        "",
        alias="TRUSTED_PROXIES",
        description="Comma-separated addresses or networks (CIDR) of proxies in front of the "
        "service. A request from one of them is attributed to the right-most X-Forwarded-For "
        "entry that is not itself a trusted proxy. Empty: only TRUST_FORWARDED_FOR applies.",
    )
    cors_allow_origins: str = Field(
        "",
        alias="CORS_ALLOW_ORIGINS",
        description="Comma-separated origins allowed to call the API from a browser; empty "
        "(the default) allows none, '*' allows any.",
    )

    # --- database ----------------------------------------------------------------
    database_url: str | None = Field(
        None,
        alias="DATABASE_URL",
        description="PostgreSQL URL. Unset: an embedded PostgreSQL is started under EMBEDDED_PG_DIR.",
    )
    liveness_database_url: str | None = Field(
        None,
        alias="LIVENESS_DATABASE_URL",
        description="A direct (session) connection for each worker's liveness lock. Default: DATABASE_URL. "
        "Behind PgBouncer in transaction pooling mode, point it at PostgreSQL itself.",
    )
    database_read_url: str | None = Field(
        None,
        alias="DATABASE_READ_URL",
        description="A streaming standby of DATABASE_URL's PostgreSQL for anonymous catalog reads that "
        "miss the cache. A read goes there only while the standby lags by at most "
        "DATABASE_READ_MAX_LAG_SECONDS and shows this worker's own last change of what is read; "
        "otherwise, and whenever it is down, reads go to the primary.",
    )
    database_read_max_lag_seconds: float = Field(
        0.5,
        alias="DATABASE_READ_MAX_LAG_SECONDS",
        gt=0,
        # The contract shows a change within 1 s: the bound plus a read's own time must
        # stay below it (and the catalog cache remembers changes for 1 s).
        le=0.8,
        description="The most a standby may lag behind the primary for reads to go to it (seconds).",
    )
    embedded_pg_dir: str = Field(
        ".data/postgres",
        alias="EMBEDDED_PG_DIR",
        description="Data folder of the embedded PostgreSQL (used only without DATABASE_URL).",
    )
    db_pool_min_size: int = Field(
        4,
        alias="DB_POOL_MIN_SIZE",
        ge=0,
        description="Connections each worker opens at start and keeps.",
    )
    db_pool_max_size: int = Field(
        20,
        alias="DB_POOL_MAX_SIZE",
        ge=1,
        description="Most connections one worker holds; total = WORKERS x this.",
    )
    db_pool_max_queries: int = Field(
        50_000,
        alias="DB_POOL_MAX_QUERIES",
        ge=1,
        description="A connection is replaced after this many queries (bounds server-side memory growth).",
    )
    db_pool_max_inactive_lifetime: float = Field(
        300.0,
        alias="DB_POOL_MAX_INACTIVE_LIFETIME",
        ge=0,
        description="Seconds an idle connection above the minimum is kept before closing (0: never closed).",
    )
    db_pool_acquire_timeout: float = Field(
        5.0,
        alias="DB_POOL_ACQUIRE_TIMEOUT",
        gt=0,
        description="Seconds a request may wait for a free connection before its work starts; "
        "then 503 with Retry-After (the overload bound, with ACTOR_QUEUE_TIMEOUT_SECONDS).",
    )
    db_pool_shed_after: float = Field(
        0.5,
        alias="DB_POOL_SHED_AFTER",
        ge=0,
        description="Overload shedding: while the oldest request waiting for a connection has waited this "
        "many seconds, new requests are answered 503 with Retry-After at once instead of queueing "
        "(0: never; DB_POOL_ACQUIRE_TIMEOUT bounds every wait either way).",
    )
    db_command_timeout: float = Field(
        10.0,
        alias="DB_COMMAND_TIMEOUT",
        gt=0,
        description="Seconds one SQL statement may run before it is cancelled (then 503).",
    )
    db_connect_timeout: float = Field(
        5.0,
        alias="DB_CONNECT_TIMEOUT",
        gt=0,
        description="Seconds to wait when opening a new connection.",
    )
    catalog_statement_timeout_ms: int = Field(
        1000,
        alias="CATALOG_STATEMENT_TIMEOUT_MS",
        ge=1,
        description="A filtered catalog list (search, price, in stock) is cancelled after this "
        "and answered 503 with Retry-After, so no anonymous request keeps the database busy.",
    )
    catalog_search_connections: int = Field(
        4,
        alias="CATALOG_SEARCH_CONNECTIONS",
        ge=1,
        description="Connections (per worker, besides DB_POOL_MAX_SIZE) that filtered catalog "
        "lists run on: however many arrive, at most this many run at once.",
    )
    db_statement_cache_size: int = Field(
        100,
        alias="DB_STATEMENT_CACHE_SIZE",
        ge=0,
        description="Prepared statements cached per connection. Set 0 behind PgBouncer in "
        "transaction pooling mode (it cannot keep prepared statements).",
    )

    # --- auth --------------------------------------------------------------------
    jwt_secret: str | None = Field(
        None,
        alias="JWT_SECRET",
        min_length=32,
        description="HS256 signing key for access tokens (at least 32 characters). Unset: a "
        "random one per start, with a warning; tokens then die with the process.",
    )
    jwt_ttl_seconds: float = Field(3600.0, alias="JWT_TTL_SECONDS", gt=0, description="Access-token lifetime.")
    admin_email: str | None = Field(
        None,
        alias="ADMIN_EMAIL",
        description="With ADMIN_PASSWORD: the admin created at start when nobody has this email.",
    )
    admin_password: str | None = Field(
        None,
        alias="ADMIN_PASSWORD",
        min_length=8,
        max_length=128,
        description="Password of the ADMIN_EMAIL admin (set when it is created).",
    )
    password_hash_time_cost: int = Field(3, alias="PASSWORD_HASH_TIME_COST", ge=1, description="argon2id iterations.")
    password_hash_memory_kib: int = Field(
        65536, alias="PASSWORD_HASH_MEMORY_KIB", ge=8, description="argon2id memory per hash."
    )
    password_hash_parallelism: int = Field(4, alias="PASSWORD_HASH_PARALLELISM", ge=1, description="argon2id lanes.")
    password_hash_max_queued: int = Field(
        32,
        alias="PASSWORD_HASH_MAX_QUEUED",
        ge=0,
        description="Password hashes (logins, sign-ups, password changes) one worker lets wait "
        "for its two hashing threads; beyond it 503 with Retry-After.",
    )
    login_max_failures_per_pair: int = Field(
        5,
        alias="LOGIN_MAX_FAILURES_PER_PAIR",
        ge=1,
        description="Password attempts for one email from one client address before each further "
        "one must wait a growing delay (1 s, doubling, at most the window): 429 with Retry-After.",
    )
    login_max_failures_per_email: int = Field(
        100,
        alias="LOGIN_MAX_FAILURES_PER_EMAIL",
        ge=0,
        description="Password attempts for one email from all addresses within the window before "
        "429 (0: off). High, so that a stranger cannot lock an account out with a few guesses.",
    )
    login_max_failures_per_ip: int = Field(
        50,
        alias="LOGIN_MAX_FAILURES_PER_IP",
        ge=0,
        description="Password attempts from one client address within the window before 429 (0: off).",
    )
    login_throttle_window_seconds: float = Field(
        300.0,
        alias="LOGIN_THROTTLE_WINDOW_SECONDS",
        gt=0,
        description="Window of the password-attempt counters, and the longest Retry-After. "
        "Successful attempts are taken back.",
    )
    register_max_per_ip: int = Field(
        100,
        alias="REGISTER_MAX_PER_IP",
        ge=0,
        description="Registrations from one client address per hour before 429 (0: off).",
    )
    refresh_ttl_seconds: float = Field(
        2_592_000.0,
        alias="REFRESH_TTL_SECONDS",
        gt=0,
        description="Lifetime of a session and its refresh tokens, counted from the login "
        "(refreshing does not extend it).",
    )
    password_reset_max_per_email: int = Field(
        20,
        alias="PASSWORD_RESET_MAX_PER_EMAIL",
        ge=0,
        description="Password-reset requests for one email from all addresses within the window before 429 "
        "(0: off); from one address, LOGIN_MAX_FAILURES_PER_PAIR.",
    )
    password_reset_ttl_seconds: float = Field(
        1800.0,
        alias="PASSWORD_RESET_TTL_SECONDS",
        gt=0,
        description="How long a password-reset token can be used.",
    )

    # --- orders --------------------------------------------------------------------
    order_ttl_seconds: float = Field(
        900.0, alias="ORDER_TTL_SECONDS", gt=0, description="Unpaid orders expire after this."
    )
    order_sweep_interval_seconds: float = Field(
        5.0,
        alias="ORDER_SWEEP_INTERVAL_SECONDS",
        gt=0,
        description="How often each worker looks for due orders no live actor covers.",
    )
    order_sweep_batch: int = Field(
        200, alias="ORDER_SWEEP_BATCH", ge=1, description="Orders expired per sweep transaction."
    )
    actor_idle_seconds: float = Field(
        2.0,
        alias="ACTOR_IDLE_SECONDS",
        gt=0,
        description="An order actor with an empty mailbox stops after this.",
    )
    actor_max_live: int = Field(
        10_000,
        alias="ACTOR_MAX_LIVE",
        ge=1,
        description="Most order actors alive in one worker; beyond it commands get 503.",
    )
    actor_mailbox_size: int = Field(
        64,
        alias="ACTOR_MAILBOX_SIZE",
        ge=1,
        description="Most commands queued for one order; beyond it 503 with Retry-After.",
    )
    max_commands_per_user: int = Field(
        16,
        alias="MAX_COMMANDS_PER_USER",
        ge=1,
        description="Most order and payment commands of one user in flight in one worker; "
        "beyond it 429 with Retry-After.",
    )
    order_batch_max: int = Field(
        256,
        alias="ORDER_BATCH_MAX",
        ge=1,
        description="Most one-item orders that arrived while their stream was placing others, placed "
        "together next in one transaction (one commit; one lock and one stock update per product; "
        "1: each alone).",
    )
    order_batch_streams: int = Field(
        1,
        alias="ORDER_BATCH_STREAMS",
        ge=1,
        description="Placements of one-item orders one worker runs at once: the products are shared "
        "among this many streams (by id), each placing what arrived meanwhile as its next batch.",
    )
    order_max_pending_per_user: int = Field(
        20,
        alias="ORDER_MAX_PENDING_PER_USER",
        ge=1,
        description="Pending orders one customer may hold; one more: 409.",
    )
    order_max_held_units_per_product: int = Field(
        1000,
        alias="ORDER_MAX_HELD_UNITS_PER_PRODUCT",
        ge=1,
        description="Units of one product one customer's pending orders may hold; more: 409.",
    )
    order_max_held_units_per_product_per_ip: int = Field(
        5000,
        alias="ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP",
        ge=0,
        description="Units of one product the pending orders placed from one client address may hold, "
        "whatever the accounts; more: 409 (0: off).",
    )

    discount_max_unknown_per_user: int = Field(
        20,
        alias="DISCOUNT_MAX_UNKNOWN_PER_USER",
        ge=0,
        description="Discount codes that do not exist one customer may try per hour; then every "
        "order naming a code gets 429 with Retry-After until the hour is over (0: off).",
    )

    actor_queue_timeout_seconds: float = Field(
        5.0,
        alias="ACTOR_QUEUE_TIMEOUT_SECONDS",
        gt=0,
        description="Seconds a command may wait behind others in an order's mailbox before it "
        "starts; then 503 with Retry-After and the command never runs.",
    )

    # --- catalog -----------------------------------------------------------------
    catalog_max_age_seconds: float = Field(
        5.0,
        alias="CATALOG_MAX_AGE_SECONDS",
        ge=0,
        description="max-age of `Cache-Control: public` on anonymous product reads (0 sends no-cache).",
    )
    catalog_cache_max_bytes: int = Field(
        67_108_864,
        alias="CATALOG_CACHE_MAX_BYTES",
        ge=0,
        description="Memory each worker's cache of product and list representations may hold "
        "(least recently used out first); 0 turns the cache off.",
    )
    catalog_changes_poll_seconds: float = Field(
        0.2,
        alias="CATALOG_CHANGES_POLL_SECONDS",
        gt=0,
        le=0.5,
        description="How often each worker polls the database's record of catalog changes "
        "(the cache serves only while a poll succeeded in the last 0.8 s).",
    )
    catalog_fresh_reads_per_ip: int = Field(
        50,
        alias="CATALOG_FRESH_READS_PER_IP",
        ge=0,
        description="Catalog reads that bypass the caches (a reload, or a valid token) one client "
        "address may make per second in each worker; beyond it they are served like anonymous "
        "reads, never refused (0: no limit).",
    )

    # --- payments ------------------------------------------------------------------
    payment_provider: Literal["simulated", "stripe"] = Field(
        "simulated",
        alias="PAYMENT_PROVIDER",
        description="Payment provider: simulated (built in), or stripe (needs STRIPE_API_KEY and "
        "STRIPE_WEBHOOK_SECRET; see docs/payments.md).",
    )
    stripe_api_key: str | None = Field(
        None,
        alias="STRIPE_API_KEY",
        repr=False,
        pattern=r"^(sk|rk)_[A-Za-z0-9_]+$",
        description="Stripe secret key (sk_live_..., sk_test_...; a restricted rk_ key works too), needed with "
        "PAYMENT_PROVIDER=stripe. Never logged.",
    )
    stripe_webhook_secret: str | None = Field(
        None,
        alias="STRIPE_WEBHOOK_SECRET",
        repr=False,
        pattern=r"^whsec_[A-Za-z0-9_+/=]+$",
        description="Signing secret of the webhook endpoint registered at Stripe (whsec_...), needed with "
        "PAYMENT_PROVIDER=stripe: events are checked against it. Never logged.",
    )
    stripe_api_base: str = Field(
        "https://api.stripe.com",
        alias="STRIPE_API_BASE",
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Where Stripe's API is (tests point it at a local stand-in).",
    )
    payment_provider_latency_ms: int = Field(
        0,
        alias="PAYMENT_PROVIDER_LATENCY_MS",
        ge=0,
        description="Latency the simulated provider adds to each call.",
    )
    payment_provider_timeout_ms: int = Field(
        10_000,
        alias="PAYMENT_PROVIDER_TIMEOUT_MS",
        ge=1,
        description="How long a provider call may take; then the outcome is looked up.",
    )
    payment_provider_fault: Literal["none", "error", "timeout"] = Field(
        "none",
        alias="PAYMENT_PROVIDER_FAULT",
        description="Simulated provider fault mode, for tests: 'error' fails calls before "
        "charging, 'timeout' charges but never answers.",
    )
    payment_provider_fault_rate: float = Field(
        0.0,
        alias="PAYMENT_PROVIDER_FAULT_RATE",
        ge=0,
        le=1,
        description="Share of simulated provider calls hit by PAYMENT_PROVIDER_FAULT.",
    )
    payment_reconcile_interval_seconds: float = Field(
        1.0,
        alias="PAYMENT_RECONCILE_INTERVAL_SECONDS",
        gt=0,
        description="How often pending payments and refunds abandoned by a dead process (or past their lease) "
        "are reconciled.",
    )
    payment_max_declines_per_order: int = Field(
        5,
        alias="PAYMENT_MAX_DECLINES_PER_ORDER",
        ge=1,
        description="Declined payments of one order after which its further payments get 409.",
    )
    payment_max_declines_per_user: int = Field(
        20,
        alias="PAYMENT_MAX_DECLINES_PER_USER",
        ge=1,
        description="Declined payments of one customer per 24 hours after which payments get 429.",
    )
    payment_max_declines_per_ip: int = Field(
        50,
        alias="PAYMENT_MAX_DECLINES_PER_IP",
        ge=0,
        description="Declined payments from one client address per 24 hours, whatever the accounts, after "
        "which payments from it get 429 (0: off).",
    )
    idempotency_key_ttl_seconds: float = Field(
        172_800.0,
        alias="IDEMPOTENCY_KEY_TTL_SECONDS",
        ge=86_400,
        description="How long Idempotency-Key records are kept (at least 24 h).",
    )
    idempotency_purge_interval_seconds: float = Field(
        3600.0,
        alias="IDEMPOTENCY_PURGE_INTERVAL_SECONDS",
        gt=0,
        description="How often expired Idempotency-Key records are purged.",
    )

    # --- webhooks --------------------------------------------------------------------
    webhook_allow_private_targets: bool = Field(
        False,
        alias="WEBHOOK_ALLOW_PRIVATE_TARGETS",
        description="Allow webhook URLs whose host resolves to a loopback, private or link-local "
        "address (refused with 422 otherwise, and checked again at every send).",
    )
    webhook_timeout_seconds: float = Field(
        10.0,
        alias="WEBHOOK_TIMEOUT_SECONDS",
        gt=0,
        le=300,
        description="How long one delivery attempt may take (connecting included); then it counts as failed.",
    )
    webhook_retry_base_seconds: float = Field(
        10.0,
        alias="WEBHOOK_RETRY_BASE_SECONDS",
        gt=0,
        description="Delay before the first retry of a failed delivery; each further retry waits "
        "twice as long (with random jitter).",
    )
    webhook_max_attempts: int = Field(
        10,
        alias="WEBHOOK_MAX_ATTEMPTS",
        ge=1,
        le=100,
        description="Attempts per delivery before it is recorded as failed.",
    )
    webhook_poll_interval_seconds: float = Field(
        1.0,
        alias="WEBHOOK_POLL_INTERVAL_SECONDS",
        gt=0,
        description="How often each worker turns new events into deliveries and claims due ones.",
    )
    webhook_max_in_flight: int = Field(
        64,
        alias="WEBHOOK_MAX_IN_FLIGHT",
        ge=1,
        description="Deliveries one worker sends at once, to all webhooks together.",
    )
    webhook_max_in_flight_per_webhook: int = Field(
        8,
        alias="WEBHOOK_MAX_IN_FLIGHT_PER_WEBHOOK",
        ge=1,
        description="Deliveries one worker sends at once to one webhook (a slow receiver never takes every slot).",
    )
    webhook_retention_seconds: float = Field(
        604_800.0,
        alias="WEBHOOK_RETENTION_SECONDS",
        gt=0,
        description="Events, finished deliveries and delivery-log entries older than this are "
        "purged (hourly); an event still owed to a webhook is kept.",
    )

    # --- observability -------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", alias="LOG_LEVEL", description="Lowest level logged (JSON lines on stdout)."
    )
    access_log: bool = Field(False, alias="ACCESS_LOG", description="Log one line per request (off under load).")
    metrics_enabled: bool = Field(
        True, alias="METRICS_ENABLED", description="Serve /metrics and record request metrics."
    )
    otel_trust_incoming_context: bool = Field(
        False,
        alias="OTEL_TRUST_INCOMING_CONTEXT",
        description="Continue the trace of an incoming `traceparent` from any client. Off: only "
        "requests from TRUSTED_PROXIES continue one; any other starts a trace of its own, "
        "sampled by the service's sampler.",
    )
    metrics_token: str | None = Field(
        None,
        alias="METRICS_TOKEN",
        min_length=16,
        description="When set, /metrics needs `Authorization: Bearer <this>` (401 otherwise). "
        "Set it wherever /metrics can be reached by anyone but the scraper.",
    )

    @model_validator(mode="after")
    def _pool_bounds(self) -> Config:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        return self

    @model_validator(mode="after")
    def _stripe_secrets(self) -> Config:
        if self.payment_provider == "stripe":
            if not self.stripe_api_key:
                raise ValueError("STRIPE_API_KEY must be set with PAYMENT_PROVIDER=stripe")
            if not self.stripe_webhook_secret:
                raise ValueError("STRIPE_WEBHOOK_SECRET must be set with PAYMENT_PROVIDER=stripe")
        return self

    @model_validator(mode="after")
    def _proxies_parse(self) -> Config:
        try:
            networks(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"TRUSTED_PROXIES: {exc}") from None
        return self

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(o.strip() for o in self.cors_allow_origins.split(",") if o.strip())


@functools.cache
def networks(text: str) -> tuple[IPv4Network | IPv6Network, ...]:
    """The networks of a comma-separated list of addresses and CIDR networks."""
    return tuple(ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def env_names() -> list[str]:
    """Every environment variable the service reads, in declaration order."""
    return [f.alias for f in Config.model_fields.values() if f.alias]


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> Config:
    """Build the configuration from the environment (empty values count as unset).

    `overrides` take field names (`db_pool_max_size=2`) and win over the environment;
    tests use them.
    """
    source = os.environ if environ is None else environ
    names = set(env_names())
    values: dict[str, object] = {k: v for k, v in source.items() if k in names and v != ""}
    for field_name, value in overrides.items():
        alias = Config.model_fields[field_name].alias
        assert alias is not None
        values[alias] = value
    try:
        return Config.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "configuration"
    message = first["msg"].removeprefix("Value error, ")
    return f"invalid configuration: {where}: {message}"


def pool_settings(config: Config, dsn: str) -> PoolSettings:
    """The pool the environment asks for; smaller pools (the CLI's, the simulated
    provider's) start from it and change their sizes."""
    return PoolSettings(
        dsn=dsn,
        min_size=config.db_pool_min_size,
        max_size=config.db_pool_max_size,
        max_queries=config.db_pool_max_queries,
        max_inactive_lifetime=config.db_pool_max_inactive_lifetime,
        acquire_timeout=config.db_pool_acquire_timeout,
        shed_after=config.db_pool_shed_after,
        command_timeout=config.db_command_timeout,
        connect_timeout=config.db_connect_timeout,
        statement_cache_size=config.db_statement_cache_size,
    )
