"""Helpers for driving the API in tests: an HTTP client with shortcuts, and real
server processes for the multi-process tests."""

from __future__ import annotations

import asyncio
import itertools
import json as std_json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from db.pool import Database
from server.domain import invariants
from server.domain.catalog_cache import STALE_BOUND_SECONDS, CatalogCache
from server.runtime.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
_emails = itertools.count(1)
_codes = itertools.count(1)
# An address as the address book and orders take it.
ADDRESS = {
    "name": "Erika Mustermann",
    "line1": "Heidestrasse 17",
    "city": "Köln",
    "postal_code": "51147",
    "country": "DE",
}


def dsn_with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def run_sql(dsn: str, sql: str) -> None:
    """Run one statement on its own connection (outside any event loop)."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}{next(_emails)}-{os.getpid()}@example.com"


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def content_type(self) -> str:
        return str(self.headers.get("Content-Type", "")).split(";")[0]

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


@dataclass
class User:
    id: int
    email: str
    password: str
    token: str


@dataclass
class Api:
    """Calls the service through an aiohttp test client or a real base URL."""

    client: Any  # aiohttp TestClient, or a ClientSession with base_url
    admin: User | None = field(default=None)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | str | None = None,
    ) -> Reply:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if json is not None:
            # The standard library's encoder: it also writes integers beyond 64 bits.
            data = std_json.dumps(json).encode()
            all_headers.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=all_headers) as response:
            return Reply(response.status, response.headers, await response.read())

    async def register(
        self, email: str | None = None, password: str = "password-123", name: str = "Test User"
    ) -> Reply:
        return await self.call(
            "POST", "/api/users/register", json={"email": email or unique_email(), "password": password, "name": name}
        )

    async def login(self, email: str, password: str) -> Reply:
        return await self.call("POST", "/api/users/login", json={"email": email, "password": password})

    async def customer(self, name: str = "Test User") -> User:
        email, password = unique_email(), "password-123"
        reply = await self.register(email, password, name)
        assert reply.status == 201, reply
        login = await self.login(email, password)
        assert login.status == 200, login
        return User(reply.json["id"], email, password, login.json["access_token"])

    async def admin_user(self) -> User:
        if self.admin is None:
            from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

            login = await self.login(ADMIN_EMAIL, ADMIN_PASSWORD)
            assert login.status == 200, login
            profile = await self.call("GET", "/api/users/profile", token=login.json["access_token"])
            self.admin = User(profile.json["id"], ADMIN_EMAIL, ADMIN_PASSWORD, login.json["access_token"])
        return self.admin

    async def product(self, **fields: Any) -> dict[str, Any]:
        admin = await self.admin_user()
        body = {"name": "Widget", "price": 1000, "stock": 10, **fields}
        reply = await self.call("POST", "/api/products", json=body, token=admin.token)
        assert reply.status == 201, reply
        product: dict[str, Any] = reply.json
        return product

    async def order(self, user: User, *lines: tuple[int, int]) -> Reply:
        items = [{"product_id": pid, "quantity": qty} for pid, qty in lines]
        return await self.call("POST", "/api/orders", json={"items": items}, token=user.token)

    async def pay(
        self, user: User, order_id: int, card: str = "tok_visa", key: str | None = None, **extra: Any
    ) -> Reply:
        body = {"order_id": order_id, "payment_method": {"type": "card", "token": card}, **extra}
        headers = {"Idempotency-Key": key} if key else None
        return await self.call("POST", "/api/payments", json=body, token=user.token, headers=headers)

    async def address(self, user: User, **fields: Any) -> dict[str, Any]:
        """An address in `user`'s book (a German one unless told otherwise)."""
        body = {**ADDRESS, **fields}
        reply = await self.call("POST", "/api/users/addresses", json=body, token=user.token)
        assert reply.status == 201, reply
        address: dict[str, Any] = reply.json
        return address

    async def shipping_method(self, **fields: Any) -> dict[str, Any]:
        admin = await self.admin_user()
        body = {"name": "Parcel", "price": 500, **fields}
        reply = await self.call("POST", "/api/shipping-methods", json=body, token=admin.token)
        assert reply.status == 201, reply
        method: dict[str, Any] = reply.json
        return method

    async def discount(self, **fields: Any) -> dict[str, Any]:
        admin = await self.admin_user()
        body = {"code": f"CODE{next(_codes)}", "kind": "percent", "value": 10, **fields}
        reply = await self.call("POST", "/api/discounts", json=body, token=admin.token)
        assert reply.status == 201, reply
        discount: dict[str, Any] = reply.json
        return discount

    async def checkout(self, user: User, *lines: tuple[int, int], **checkout: Any) -> Reply:
        """POST /api/orders with the checkout's members (shipping_address, shipping_address_id,
        shipping_method_id, discount_code) as given."""
        items = [{"product_id": pid, "quantity": qty} for pid, qty in lines]
        return await self.call("POST", "/api/orders", json={"items": items, **checkout}, token=user.token)

    async def stock(self, product_id: int) -> int:
        reply = await self.call("GET", f"/api/products/{product_id}")
        assert reply.status == 200, reply
        stock: int = reply.json["stock"]
        return stock


class ServerProcess:
    """`python -m server` as a real process (WORKERS=1 unless told otherwise)."""

    def __init__(
        self,
        database_url: str,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        port: int | None = None,
    ) -> None:
        from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET

        self.port = port or free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "WORKERS": "1",
            "JWT_SECRET": JWT_SECRET,
            "ADMIN_EMAIL": ADMIN_EMAIL,
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
            "PASSWORD_HASH_TIME_COST": "1",
            "PASSWORD_HASH_MEMORY_KIB": "1024",
            "PASSWORD_HASH_PARALLELISM": "1",
            "DB_POOL_SHED_AFTER": "0",  # as make_config (tests/conftest.py)
            "LOG_LEVEL": "WARNING",
            **(env or {}),
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait()
        except subprocess.TimeoutExpired:
            self.kill()
            return None


# The service's own invariant checker (as `check-invariants` runs it) on a database.
invariant_violations = invariants.violations_at


def session(base_url: str, **kwargs: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(base_url=base_url, **kwargs)


@dataclass
class ProviderWatch:
    """How many provider calls were in flight at once, and the pool's size at each."""

    most_in_flight: int = 0
    pool_sizes: list[int] = field(default_factory=list)

    def holds_no_connection(self, max_pool: int) -> bool:
        """More calls were in flight at once than the pool has connections, and the
        pool never grew: no call held a pooled connection."""
        return self.most_in_flight > max_pool and all(size <= max_pool for size in self.pool_sizes)


def watch_provider(provider: Any, method: str, pool: Any, crowd: int = 3, timeout: float = 60.0) -> ProviderWatch:
    """Replace `provider.<method>` with one that records a ProviderWatch and holds each
    call until `crowd` calls are in flight at once (a pool smaller than `crowd` cannot
    serve that many calls that each hold a connection: then the calls never get there
    and fail after `timeout`). Decided by what happens, not by sampling a window."""
    real, watch, in_flight, crowded = getattr(provider, method), ProviderWatch(), [0], asyncio.Event()

    async def observed(request: Any) -> Any:
        in_flight[0] += 1
        watch.most_in_flight = max(watch.most_in_flight, in_flight[0])
        if in_flight[0] >= crowd:
            crowded.set()
        try:
            await asyncio.wait_for(crowded.wait(), timeout)
            watch.pool_sizes.append(pool.get_size())
            return await real(request)
        finally:
            in_flight[0] -= 1

    setattr(provider, method, observed)
    return watch


@dataclass
class ProviderHold:
    """Calls of one provider method, each held until `release()`: what a test does
    "while a payment (or refund) is in flight" happens while it certainly is."""

    calling: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def in_flight(self, timeout: float = 30.0) -> None:
        """Until a call has reached the provider (and is held there)."""
        await asyncio.wait_for(self.calling.wait(), timeout)

    def release(self) -> None:
        self.released.set()


def hold_provider(provider: Any, method: str) -> ProviderHold:
    """Replace `provider.<method>` with one that waits for the hold's release first."""
    real, hold = getattr(provider, method), ProviderHold()

    async def held(request: Any) -> Any:
        hold.calling.set()
        await hold.released.wait()
        return await real(request)

    setattr(provider, method, held)
    return hold


async def new_work_in_line(db: Database, count: int) -> bool:
    """Whether `count` pieces of new work (requests' first statements) wait in the
    pool's line: a condition for `eventually`."""
    return db.new_work_waiting == count


async def eventually(check: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Until the coroutine function `check` returns something true, which is returned
    (a generous deadline for a busy machine): tests wait for what they check, never
    for a while."""
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, f"{getattr(check, '__name__', 'the condition')} never held"
        await asyncio.sleep(interval)
    return value


@dataclass(frozen=True)
class Scrape:
    """One read of /metrics, parsed by prometheus_client's own parser."""

    text: str

    def samples(self, name: str) -> list[Sample]:
        families = text_string_to_metric_families(self.text)
        return [sample for family in families for sample in family.samples if sample.name == name]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples `name` whose labels include `labels`; 0 when there is none."""
        return sum(sample.value for sample in self.samples(name) if labels.items() <= sample.labels.items())


async def scrape(api: Api) -> Scrape:
    reply = await api.call("GET", "/metrics")
    assert reply.status == 200, reply
    return Scrape(reply.body.decode())


async def catalog_reads(api: Api) -> dict[str, float]:
    """Catalog reads made on a database so far, by target (primary, standby)."""
    return {sample.labels["target"]: sample.value for sample in (await scrape(api)).samples("catalog_reads_total")}


def watch_polled_since(cache: CatalogCache, moment: float) -> bool:
    """The catalog watch has applied a poll begun after `moment` (on the monotonic clock)."""
    return cache._serve_until - STALE_BOUND_SECONDS > moment


async def watch_poll_after(cache: CatalogCache, moment: float) -> None:
    """Until the catalog watch has applied a poll begun after `moment`."""

    async def polled() -> bool:
        return watch_polled_since(cache, moment)

    await eventually(polled)


async def feed(api: Api, query: str = "") -> dict[str, Any]:
    admin = await api.admin_user()
    reply = await api.call("GET", f"/api/events{query}", token=admin.token)
    assert reply.status == 200, reply
    page: dict[str, Any] = reply.json
    return page


async def all_events(api: Api, dsn: str, query: str = "") -> list[dict[str, Any]]:
    """The feed once it shows every committed event. An event is shown once every
    transaction older than it has ended, on the whole PostgreSQL server (which other
    test runs share), so it may take a moment to appear."""
    admin = await api.admin_user()
    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    for _ in range(400):
        shown = await api.call("GET", "/api/events?limit=100", token=admin.token)
        if len(shown.json["items"]) >= total:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the feed did not show all {total} events")
    page = await feed(api, query)
    return list(page["items"])
