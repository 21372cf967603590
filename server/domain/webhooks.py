"""Webhooks: admin changes, target checks, and delivery by per-queue actors.

Delivery, in every worker, every WEBHOOK_POLL_INTERVAL_SECONDS:

1. fan-out: the next events of the outbox (in feed order, see db/events.py) become
   one delivery each per subscribed, enabled webhook that was active when the event
   happened; one process at a time does it (a row lock), and the position moves in
   the same transaction, so each event is fanned out exactly once;
2. claim: the due heads of the queues (a queue = one webhook's deliveries about one
   resource, e.g. one order) get a lease, as many as this worker may send at once
   (WEBHOOK_MAX_IN_FLIGHT, and WEBHOOK_MAX_IN_FLIGHT_PER_WEBHOOK per webhook, so a
   hanging receiver cannot take every slot);
3. each claimed delivery goes to its queue's actor, which POSTs it (signed), records
   the outcome under its lease and, when the delivery is done with, claims the next
   of its queue at once. A failed attempt is retried with backoff; the queue waits
   for it (order.paid is not sent before order.created was accepted).

Everything is in PostgreSQL: a worker killed mid-send leaves a lease that runs out,
and the delivery is claimed again (at least once). The lease outlasts a send (the
send is bounded by WEBHOOK_TIMEOUT_SECONDS), so two processes never send the same
attempt at the same moment.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import logging
import random
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import orjson
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from yarl import URL

from db import webhooks as webhooks_db
from db.refusals import Refusal
from server.domain.context import Context
from server.domain.events import resource_of
from server.domain.order_actors import Actor, Supervisor
from server.domain.pages import keyset_page
from server.domain.shapes import event_json
from server.runtime.config import Config
from server.runtime.jsonio import dumps

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32
_FAN_OUT_BATCH = 500
# The first look again at events held back by an older transaction (doubling after).
_HELD_BACK_FIRST_RETRY_SECONDS = 0.02
# While no webhook is enabled, how often a commit's wake may ask whether one is now
# (Deliverer.turn): a webhook enabled anywhere gets its first events this much later
# at most, and a busy worker asks ten times a second instead of at every commit.
_LISTENERS_LOOK_SECONDS = 0.1


# --- secrets ------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


# --- targets ------------------------------------------------------------------------------


# IPv6 prefixes that carry an IPv4 address in their last 32 bits: NAT64's well-known
# prefix (RFC 6052) and the deprecated IPv4-compatible addresses (RFC 4291).
_IPV4_IN_LOW_BITS = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::/96"))


def address_allowed(address: str) -> bool:
    """Only public unicast addresses: never loopback, private, link-local, shared,
    reserved, multicast or unspecified ones. An IPv6 address that embeds an IPv4 one
    (IPv4-mapped, IPv4-compatible, 6to4, NAT64) is judged by the IPv4 address it
    reaches; a site-local one (fec0::/10, deprecated but still routed inside some
    networks) is never public, whatever `is_global` says of it."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return embedded.is_global and not embedded.is_multicast
    return ip.is_global and not ip.is_multicast


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in prefix for prefix in _IPV4_IN_LOW_BITS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def _parse_target(url: str) -> URL:
    # Control characters (CR and LF above all) have no place in a URL: stored, they
    # would reach logs, receivers' tooling and any header built from the URL.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise Refusal("webhook_url_control_characters")
    try:
        target = URL(url)
    except ValueError:
        raise Refusal("webhook_url_invalid") from None
    if target.scheme not in ("http", "https") or not target.host or not target.is_absolute():
        raise Refusal("webhook_url_invalid")
    return target


async def check_target(ctx: Context, url: str) -> None:
    """Refused unless `url` is http(s) and (unless private targets are allowed) its host
    resolves to public addresses only. Checked again at every send (DNS rebinding)."""
    target = _parse_target(url)
    if ctx.config.webhook_allow_private_targets:
        return
    host = target.raw_host or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise Refusal("webhook_host_unresolved") from None
    if not infos or not all(address_allowed(str(info[4][0])) for info in infos):
        raise Refusal("webhook_host_private")


def is_mailer(subscribed: Sequence[str], event_type: str, url: str, config: Config) -> bool:
    """Whether a webhook gets an event's secrets (a reset request's token): only one
    that subscribes to the type by name (not through "*"), over https (or any scheme
    where private targets are allowed, as in development)."""
    secure = url.lower().startswith("https://") or config.webhook_allow_private_targets
    return event_type in subscribed and secure


# --- admin --------------------------------------------------------------------------------


async def create(ctx: Context, url: str, events: list[str], description: str) -> tuple[asyncpg.Record, str]:
    """A new webhook and its signing secret (shown in this answer only)."""
    await check_target(ctx, url)
    secret = new_secret()
    row = await webhooks_db.create(ctx.db, url=url, events=events, description=description, secret=secret)
    return row, secret


async def get(ctx: Context, webhook_id: int) -> asyncpg.Record:
    row = await webhooks_db.get(ctx.db, webhook_id)
    if row is None:
        raise Refusal("webhook_not_found")
    return row


async def page(ctx: Context, cursor: str | None, limit: int) -> tuple[list[asyncpg.Record], str | None]:
    """Webhooks, oldest first."""

    async def fetch(after: list[int] | None, limit: int) -> list[asyncpg.Record]:
        return await webhooks_db.page(ctx.db, None if after is None else after[0], limit)

    return await keyset_page(ctx, "webhooks", cursor, limit, fetch)


async def update(ctx: Context, webhook_id: int, changes: dict[str, Any]) -> asyncpg.Record:
    if "url" in changes:
        await check_target(ctx, changes["url"])
    row = await webhooks_db.update(ctx.db, webhook_id, changes)
    if row is None:
        raise Refusal("webhook_not_found")
    return row


async def delete(ctx: Context, webhook_id: int) -> None:
    if not await webhooks_db.delete(ctx.db, webhook_id):
        raise Refusal("webhook_not_found")


async def attempts_page(
    ctx: Context, webhook_id: int, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    """A webhook's delivery attempts, newest first."""
    await get(ctx, webhook_id)

    async def fetch(after: list[int] | None, limit: int) -> list[asyncpg.Record]:
        return await webhooks_db.attempts_page(ctx.db, webhook_id, None if after is None else after[0], limit)

    return await keyset_page(ctx, f"webhook-deliveries:{webhook_id}", cursor, limit, fetch)


# --- delivery -----------------------------------------------------------------------------


def plan(events: Sequence[asyncpg.Record], hooks: Sequence[asyncpg.Record]) -> list[webhooks_db.Delivery]:
    """Who gets which event: every enabled webhook subscribed to its type that was
    active when it happened, in feed order."""
    deliveries: list[webhooks_db.Delivery] = []
    for event in events:
        resource: str | None = None
        for hook in hooks:
            if event["created_at"] < hook["active_since"]:
                continue
            if "*" not in hook["events"] and event["type"] not in hook["events"]:
                continue
            if resource is None:
                resource = resource_of(event["type"], orjson.loads(event["data"]))
            deliveries.append((hook["id"], event["id"], event["type"], resource))
    return deliveries


def retry_delay(base: float, attempt: int) -> float:
    """Exponential backoff with jitter: base x 2^(attempt-1), the upper half drawn at
    random so that the retries of many deliveries spread out."""
    ceiling: float = base * 2 ** (attempt - 1)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class Sent:
    """What became of one attempt: the receiver's status, or why there is none."""

    response_status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.response_status is not None and 200 <= self.response_status < 300


class Sender(Protocol):
    """How a delivery reaches its receiver (server/gateways/webhook_sender.py): one
    signed POST of the event's JSON, bounded by WEBHOOK_TIMEOUT_SECONDS."""

    async def send(self, url: str, secret: str, event_id: int, body: bytes) -> Sent: ...

    async def close(self) -> None: ...


QueueKey = tuple[int, str]  # (webhook id, resource)


class EventCommits:
    """Tells of the events this process's own transactions commit (a pooled session's
    NOTICE from emit_event, then the connection's return to the pool: db/pool.py's
    SessionWatcher), so that its deliverer turns at once instead of at its next poll."""

    NOTICE = "events:written"

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self._writing: set[object] = set()

    def notice(self, conn: object, message: asyncpg.PostgresLogMessage) -> None:
        if message.message == self.NOTICE:
            self._writing.add(conn)

    def released(self, conn: object) -> None:
        if conn in self._writing:
            self._writing.discard(conn)
            self.wake.set()


@dataclass
class Deliverer:
    """A worker's half of webhook delivery: the fan-out and claim turn, the queue
    actors, and the sender they share. A turn runs every WEBHOOK_POLL_INTERVAL_SECONDS,
    and at once when this process commits an event or a send frees a slot (`wake`): so
    new events go out without waiting for a poll, and a freed slot takes the next due
    delivery, while one turn at a time claims within the in-flight limits. While no
    webhook is enabled, a wake only asks whether one is (see `turn`)."""

    ctx: Context
    supervisor: Supervisor[QueueKey]
    sender: Sender
    wake: asyncio.Event
    busy: collections.Counter[int] = field(default_factory=collections.Counter)
    # Set when tracing is on: each send is a client span of its own.
    tracer: Tracer | None = None
    # How soon to look again while committed events are held back (fan_out).
    held_back_retry: float = field(default=_HELD_BACK_FIRST_RETRY_SECONDS, init=False)
    # Whether a webhook was enabled at the last look (turn), when the next poll may be,
    # and when the next look.
    listening: bool = field(default=False, init=False)
    next_poll: float = field(default=0.0, init=False)
    next_look: float = field(default=0.0, init=False)
    look_scheduled: bool = field(default=False, init=False)

    @property
    def lease_seconds(self) -> float:
        """Longer than a send (bounded by the timeout) and the recording after it."""
        return 2 * self.ctx.config.webhook_timeout_seconds + 10

    @property
    def in_flight(self) -> int:
        return sum(self.busy.values())

    async def turn(self) -> None:
        """Fan out and claim; but while no webhook is enabled, a turn woken by a commit
        only asks whether one is now, at most every _LISTENERS_LOOK_SECONDS, and fans
        out only if so. The fan-out is a write transaction (it locks and moves the
        dispatch position), and commits wake it every few payments: with nobody to
        deliver to, that was PostgreSQL's work for nothing. The poll still fans out,
        so the position never falls behind by more than a poll interval's events."""
        now = asyncio.get_running_loop().time()
        if now >= self.next_poll:
            # Half an interval: the poll's own turn counts as one even when its timer
            # fires a little early, and a stream of wakes still polls twice an interval.
            self.next_poll = now + self.ctx.config.webhook_poll_interval_seconds / 2
            self.listening = await webhooks_db.any_enabled(self.ctx.db)
        elif not self.listening and not await self._listened_to(now):
            return
        await self.fan_out()
        await self.claim()

    async def _listened_to(self, now: float) -> bool:
        """Whether a webhook is enabled now; asked at most every _LISTENERS_LOOK_SECONDS.
        A wake within that time is not lost: it is kept for the next look."""
        if now < self.next_look:
            if not self.look_scheduled:
                self.look_scheduled = True
                asyncio.get_running_loop().call_later(self.next_look - now, self._look_due)
            return False
        self.next_look = now + _LISTENERS_LOOK_SECONDS
        self.listening = await webhooks_db.any_enabled(self.ctx.db)
        return self.listening

    def _look_due(self) -> None:
        self.look_scheduled = False
        self.wake.set()

    async def fan_out(self) -> int:
        total = 0
        while True:
            read = await webhooks_db.fan_out_batch(self.ctx.db, _FAN_OUT_BATCH, plan)
            total += read or 0
            if read != _FAN_OUT_BATCH:
                break
        # (None: another process is fanning out, and it looks for itself.)
        held = read is not None and await webhooks_db.held_back(self.ctx.db)
        if total or not held:  # the feed moved, or nothing waits: no long transaction in the way
            self.held_back_retry = _HELD_BACK_FIRST_RETRY_SECONDS
        if held:
            self.ctx.metrics.webhook_events_held_back.inc()
            self._turn_again_soon()
        return total

    def _turn_again_soon(self) -> None:
        """Committed events are kept out of the feed by an older transaction still in
        flight: look again shortly, and while turns find nothing new, less and less
        often up to the poll interval, rather than leave them to the next poll."""
        asyncio.get_running_loop().call_later(self.held_back_retry, self.wake.set)
        self.held_back_retry = min(2 * self.held_back_retry, self.ctx.config.webhook_poll_interval_seconds)

    async def claim(self) -> None:
        config = self.ctx.config
        room = config.webhook_max_in_flight - self.in_flight
        if room <= 0 or self.supervisor.draining:
            return
        claimed = await webhooks_db.claim(
            self.ctx.db,
            busy=dict(self.busy),
            per_webhook=config.webhook_max_in_flight_per_webhook,
            limit=room,
            lease_seconds=self.lease_seconds,
        )
        for delivery in claimed:
            webhook_id = delivery["webhook_id"]
            self.busy[webhook_id] += 1

            async def command(actor: Actor[Any], delivery: asyncpg.Record = delivery) -> None:
                await self._work(delivery)

            if not self.supervisor.tell((webhook_id, delivery["resource"]), command):
                self._done(webhook_id)
                await webhooks_db.release(self.ctx.db, delivery["id"], delivery["lease_until"])

    def _done(self, webhook_id: int) -> None:
        self.busy[webhook_id] -= 1
        if self.busy[webhook_id] <= 0:
            del self.busy[webhook_id]
        self.wake.set()  # a slot is free: the next turn claims for it

    async def _work(self, first: asyncpg.Record) -> None:
        """Send a claimed delivery; while its queue's deliveries are done with and
        the next is due, go on with the next (under one in-flight slot)."""
        webhook_id, resource = first["webhook_id"], first["resource"]
        delivery: asyncpg.Record | None = first
        try:
            while delivery is not None and not self.supervisor.draining:
                if not await self._attempt(delivery):
                    return
                delivery = await webhooks_db.claim_next(self.ctx.db, webhook_id, resource, self.lease_seconds)
            if delivery is not None:
                await webhooks_db.release(self.ctx.db, delivery["id"], delivery["lease_until"])
        finally:
            self._done(webhook_id)

    async def _attempt(self, delivery: asyncpg.Record) -> bool:
        """One attempt, recorded; True when the delivery is done with (delivered,
        or failed for good) and its queue may go on."""
        config, metrics = self.ctx.config, self.ctx.metrics
        if delivery["data"] is None:
            outcome = Sent(None, "the event no longer exists")
        else:
            outcome = await self._post(delivery)
        attempt = delivery["attempts"] + 1
        if outcome.delivered:
            status, retry_in = "succeeded", None
        elif attempt >= config.webhook_max_attempts or delivery["data"] is None:
            status, retry_in = "failed", None
        else:
            status, retry_in = "pending", retry_delay(config.webhook_retry_base_seconds, attempt)
        recorded = await webhooks_db.record(
            self.ctx.db,
            delivery["id"],
            delivery["lease_until"],
            status=status,
            retry_in=retry_in,
            response_status=outcome.response_status,
            error=outcome.error,
        )
        if not recorded:
            log.warning("webhook delivery lease ran out before its outcome was recorded", extra={"id": delivery["id"]})
            return False
        metrics.webhook_deliveries.labels({"pending": "retried"}.get(status, status)).inc()
        return status != "pending"

    async def _post(self, delivery: asyncpg.Record) -> Sent:
        if self.tracer is None:
            return await self._send(delivery)
        attributes = {"webhook.event_id": delivery["event_id"], "webhook.event_type": delivery["event_type"]}
        with self.tracer.start_as_current_span("webhook.deliver", kind=SpanKind.CLIENT, attributes=attributes) as span:
            outcome = await self._send(delivery)
            if outcome.response_status is not None:
                span.set_attribute("http.response.status_code", outcome.response_status)
            if not outcome.delivered:
                span.set_status(StatusCode.ERROR, outcome.error)
            return outcome

    async def _send(self, delivery: asyncpg.Record) -> Sent:
        for_mailer = is_mailer(delivery["subscribed"], delivery["event_type"], delivery["url"], self.ctx.config)
        event = event_json(
            delivery["event_id"],
            delivery["event_type"],
            delivery["event_created_at"],
            delivery["data"],
            for_mailer=for_mailer,
        )
        return await self.sender.send(delivery["url"], delivery["secret"], delivery["event_id"], dumps(event))

    async def close(self, timeout: float) -> None:
        await self.supervisor.drain(timeout)
        await self.sender.close()


async def refresh_gauges(ctx: Context, deliverer: Deliverer) -> None:
    lag, pending = await webhooks_db.backlog(ctx.db)
    metrics = ctx.metrics
    metrics.webhook_outbox_lag.set(lag)
    metrics.webhook_pending.set(pending)
    metrics.webhook_in_flight.set(deliverer.in_flight)
    metrics.webhook_actors_live.set(deliverer.supervisor.live_count)


async def purge(ctx: Context) -> int:
    return await webhooks_db.purge(ctx.db, ctx.config.webhook_retention_seconds)
