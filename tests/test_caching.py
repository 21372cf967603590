"""HTTP caching of the catalog and the freshness of the in-process cache.

Several tests make a change that the cache cannot hear of (a session with
`session_replication_role = replica` fires no trigger): a read that still shows the
old value then proves it came from the cache, and one that shows the new value
proves it did not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from db.refusals import Refusal
from handlers.routing import CONTEXT
from server.domain import catalog
from server.domain.catalog_cache import STALE_BOUND_SECONDS, CatalogCache, Representation
from server.runtime.metrics import Metrics
from tests.helpers import Api, catalog_reads, scrape, watch_poll_after, watch_polled_since

# The in-process tests poll slowly: a change must be seen at once by the process
# that made it, without the help of the poll.
SLOW_POLL = {"catalog_changes_poll_seconds": 0.5}


async def cache_serving(client: TestClient[Any, Any]) -> None:
    """Wait until the app's catalog watch has made its first poll."""
    cache = client.app[CONTEXT].catalog
    deadline = time.monotonic() + 10
    while not cache.serving:
        assert time.monotonic() < deadline, "the catalog cache never started serving"
        await asyncio.sleep(0.02)


async def silent_update(dsn: str, sql: str, *args: Any) -> None:
    """A change no trigger sees: the cache never hears of it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def served_stale(api: Api, client: Any, dsn: str, product_id: int, *paths: str) -> int:
    """Warm the cache (the product and `paths`), change the product's price where the
    cache cannot hear of it, and check that a read still shows the old price: proof
    that the cache serves. Returns the new price. Tries again when the cache paused
    meanwhile (it stops serving whenever its watch falls behind, as it may on a
    loaded machine)."""
    product_path = f"/api/products/{product_id}"
    for _ in range(10):
        await cache_serving(client)
        for path in (product_path, *paths):
            await warm(api, path)
        old = (await api.call("GET", product_path)).json["price"]
        await silent_update(dsn, "UPDATE products SET price = $2 WHERE id = $1", product_id, old + 1)
        if (await api.call("GET", product_path)).json["price"] == old:
            return int(old) + 1
    raise AssertionError("the cache never served a read")


async def warm(api: Api, path: str) -> Any:
    first = await api.call("GET", path)
    second = await api.call("GET", path)
    assert first.status == second.status == 200
    return second


# --- HTTP: ETag, If-None-Match, Cache-Control -----------------------------------------------


def _cache_holding_one_entry() -> CatalogCache:
    cache = CatalogCache(1 << 20, Metrics())
    cache.confirm(time.monotonic(), resumed=False)
    cache.put(1, Representation('W/"1"', b"{}"), cache.epoch)
    assert cache.get(1, "product") is not None
    return cache


def test_after_a_short_stall_of_its_watch_the_cache_resumes_with_what_it_held() -> None:
    cache = _cache_holding_one_entry()
    cache.confirm(time.monotonic() - 2 * STALE_BOUND_SECONDS, resumed=True)  # a poll that came late
    assert not cache.serving and cache.get(1, "product") is None  # stale meanwhile: nothing served
    cache.confirm(time.monotonic(), resumed=True)  # the next poll brought every change since
    assert cache.get(1, "product") is not None


def test_after_a_gap_in_which_changes_may_have_been_missed_the_cache_starts_empty() -> None:
    cache = _cache_holding_one_entry()
    cache.stop_serving()  # the watch's connection was lost
    cache.confirm(time.monotonic(), resumed=False)  # the first poll of a new watch
    assert cache.serving and cache.get(1, "product") is None


async def test_a_product_read_sends_an_etag_and_public_max_age(api: Api) -> None:
    product = await api.product()
    reply = await api.call("GET", f"/api/products/{product['id']}")
    assert reply.status == 200
    assert reply.headers["ETag"].startswith('"')
    assert reply.headers["Cache-Control"] == "public, max-age=5"
    assert reply.json == product


async def test_a_list_read_sends_an_etag_and_public_max_age(api: Api) -> None:
    await api.product()
    reply = await api.call("GET", "/api/products")
    assert reply.status == 200
    assert reply.headers["ETag"].startswith('"')
    assert reply.headers["Cache-Control"] == "public, max-age=5"


@pytest.mark.parametrize("config_overrides", [{"catalog_max_age_seconds": 0}])
async def test_max_age_zero_sends_no_cache(api: Api) -> None:
    product = await api.product()
    for path in (f"/api/products/{product['id']}", "/api/products"):
        assert (await api.call("GET", path)).headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("config_overrides", [{"catalog_max_age_seconds": 60}])
async def test_max_age_follows_the_setting(api: Api) -> None:
    product = await api.product()
    assert (await api.call("GET", f"/api/products/{product['id']}")).headers["Cache-Control"] == "public, max-age=60"


@pytest.mark.parametrize("path", ["/api/products/{id}", "/api/products", "/api/products?sort=-price&limit=1"])
async def test_the_current_etag_in_if_none_match_gets_304_without_body(api: Api, path: str) -> None:
    product = await api.product()
    path = path.format(id=product["id"])
    etag = (await api.call("GET", path)).headers["ETag"]
    reply = await api.call("GET", path, headers={"If-None-Match": etag})
    assert reply.status == 304
    assert reply.body == b""
    assert reply.headers["ETag"] == etag
    assert reply.headers["Cache-Control"] == "public, max-age=5"


@pytest.mark.parametrize("form", ["W/{etag}", '"other", {etag}', '"a",{etag} ,"b"', "*"])
async def test_if_none_match_compares_weakly_takes_lists_and_star(api: Api, form: str) -> None:
    product = await api.product()
    path = f"/api/products/{product['id']}"
    etag = (await api.call("GET", path)).headers["ETag"]
    reply = await api.call("GET", path, headers={"If-None-Match": form.format(etag=etag)})
    assert reply.status == 304


async def test_an_old_or_foreign_etag_gets_the_full_answer(api: Api) -> None:
    product = await api.product()
    path = f"/api/products/{product['id']}"
    reply = await api.call("GET", path, headers={"If-None-Match": '"nope", W/"1.1.1"'})
    assert reply.status == 200
    assert reply.json["id"] == product["id"]


async def test_star_on_a_missing_product_is_404(api: Api) -> None:
    assert (await api.call("GET", "/api/products/999999", headers={"If-None-Match": "*"})).status == 404


async def test_an_authenticated_read_is_no_store_never_public(api: Api) -> None:
    product = await api.product()
    user = await api.customer()
    for path in (f"/api/products/{product['id']}", "/api/products"):
        reply = await api.call("GET", path, token=user.token)
        assert reply.status == 200
        assert reply.headers["Cache-Control"] == "no-store"


async def test_error_answers_are_never_public(api: Api) -> None:
    for path in ("/api/products/999999", "/api/products?limit=0", "/api/products?sort=nope"):
        reply = await api.call("GET", path)
        assert reply.status in (404, 422)
        assert "public" not in reply.headers.get("Cache-Control", "")
        assert "ETag" not in reply.headers


@pytest.mark.parametrize(
    "change",
    [{"name": "Renamed"}, {"price": 1234}, {"stock": 3}, {"description": "new words"}, {"sku": "SKU-9"}],
)
async def test_the_etag_changes_with_every_change_of_the_representation(api: Api, change: dict[str, Any]) -> None:
    product = await api.product()
    admin = await api.admin_user()
    path = f"/api/products/{product['id']}"
    before = await api.call("GET", path)
    list_before = await api.call("GET", "/api/products")
    assert (await api.call("PUT", path, json=change, token=admin.token)).status == 200
    after = await api.call("GET", path, headers={"If-None-Match": before.headers["ETag"]})
    assert after.status == 200
    assert after.headers["ETag"] != before.headers["ETag"]
    assert all(after.json[k] == v for k, v in change.items())
    list_after = await api.call("GET", "/api/products", headers={"If-None-Match": list_before.headers["ETag"]})
    assert list_after.status == 200


@pytest.mark.parametrize("config_overrides", [{"catalog_cache_max_bytes": 0}])
@pytest.mark.parametrize("path", ["/api/products/{id}", "/api/products"])
async def test_an_etag_reveals_nothing_about_the_database(api: Api, clean_db: str, path: str) -> None:
    """An ETag made of the row version's transaction id is a counter of the database's
    writes: a rewrite of the row that leaves the representation as it was (a new row
    version, a later transaction id) must leave the ETag as it was."""
    product = await api.product(price=100)
    path = path.format(id=product["id"])
    before = await api.call("GET", path)
    await silent_update(clean_db, "UPDATE products SET price = price WHERE id = $1", product["id"])
    after = await api.call("GET", path)
    assert after.body == before.body
    assert after.headers["ETag"] == before.headers["ETag"]


@pytest.mark.parametrize("path", ["/api/products/{id}", "/api/products"])
async def test_catalog_answers_vary_by_authorization(api: Api, path: str) -> None:
    product = await api.product()
    path = path.format(id=product["id"])
    user = await api.customer()
    anonymous = await api.call("GET", path)
    with_token = await api.call("GET", path, token=user.token)
    not_modified = await api.call("GET", path, headers={"If-None-Match": anonymous.headers["ETag"]})
    assert (anonymous.status, with_token.status, not_modified.status) == (200, 200, 304)
    for reply in (anonymous, with_token, not_modified):
        assert "Authorization" in [v.strip() for v in reply.headers.get("Vary", "").split(",")], reply.headers


@pytest.mark.parametrize("config_overrides", [{"cors_allow_origins": "https://shop.example"}])
async def test_a_cors_answer_varies_by_origin_and_authorization(api: Api) -> None:
    product = await api.product()
    reply = await api.call("GET", f"/api/products/{product['id']}", headers={"Origin": "https://shop.example"})
    assert {v.strip() for v in reply.headers["Vary"].split(",")} == {"Authorization", "Origin"}


async def test_list_etags_differ_between_queries(api: Api) -> None:
    await api.product(price=10)
    await api.product(price=20)
    tags = {(await api.call("GET", path)).headers["ETag"] for path in
            ("/api/products", "/api/products?sort=-price", "/api/products?limit=1", "/api/products?min_price=15")}  # fmt: skip
    assert len(tags) == 4


# --- the in-process cache: served, and bypassed when it must be ------------------------------


async def test_an_anonymous_read_is_served_from_the_cache(api: Api, client: Any, clean_db: str) -> None:
    """The control for the tests below: a change the cache cannot hear of stays unseen."""
    product = await api.product(price=100)
    await served_stale(api, client, clean_db, product["id"])


@pytest.mark.parametrize("headers", [{"Cache-Control": "no-cache"}, {"Cache-Control": "max-age=0, no-cache"}])
async def test_a_reload_gets_the_current_representation(
    api: Api, client: Any, clean_db: str, headers: dict[str, str]
) -> None:
    product = await api.product(price=100)
    new = await served_stale(api, client, clean_db, product["id"], "/api/products")
    assert (await api.call("GET", f"/api/products/{product['id']}", headers=headers)).json["price"] == new
    assert (await api.call("GET", "/api/products", headers=headers)).json["items"][0]["price"] == new


async def test_an_authenticated_read_gets_the_current_representation(api: Api, client: Any, clean_db: str) -> None:
    product = await api.product(price=100)
    user = await api.customer()
    new = await served_stale(api, client, clean_db, product["id"], "/api/products")
    assert (await api.call("GET", f"/api/products/{product['id']}", token=user.token)).json["price"] == new
    assert (await api.call("GET", "/api/products", token=user.token)).json["items"][0]["price"] == new


@pytest.mark.parametrize("path", ["/api/products/{id}", "/api/products?limit=5"])
@pytest.mark.parametrize("authorization", ["Bearer x", "Bearer ", "Basic YWRtaW46YWRtaW4=", "token"])
async def test_a_catalog_read_with_an_authorization_that_is_not_a_token_is_401(
    api: Api, path: str, authorization: str
) -> None:
    product = await api.product()
    reply = await api.call("GET", path.format(id=product["id"]), headers={"Authorization": authorization})
    assert reply.status == 401, reply
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_catalog_read_with_a_revoked_token_is_401(api: Api) -> None:
    product = await api.product()
    user = await api.customer()
    assert (await api.call("POST", "/api/users/logout", json={}, token=user.token)).status == 204
    assert (await api.call("GET", f"/api/products/{product['id']}", token=user.token)).status == 401


async def fresh_reads_until_cached(api: Api, dsn: str, product_id: int, **call: Any) -> list[bool]:
    """Reads that ask to be fresh, one after another, each after a change of the price
    that the cache cannot hear of: True for a read that shows the change (fresh),
    False for one that does not (served from the cache), until one is False (at most
    50). Every read must be answered 200: past the limit a read is served, never refused."""
    fresh: list[bool] = []
    while len(fresh) < 50 and all(fresh):
        price = await silent_price_bump(dsn, product_id)
        reply = await api.call("GET", f"/api/products/{product_id}", **call)
        assert reply.status == 200, reply
        fresh.append(reply.json["price"] == price)
    return fresh


async def silent_price_bump(dsn: str, product_id: int) -> int:
    """Raise the price by one where the cache cannot hear of it; the new price."""
    await silent_update(dsn, "UPDATE products SET price = price + 1 WHERE id = $1", product_id)
    conn = await asyncpg.connect(dsn)
    try:
        price: int = await conn.fetchval("SELECT price FROM products WHERE id = $1", product_id)
    finally:
        await conn.close()
    return price


@pytest.mark.parametrize("config_overrides", [{"catalog_fresh_reads_per_ip": 1}])
@pytest.mark.parametrize("how", ["token", "reload"])
async def test_fresh_reads_beyond_the_per_address_limit_are_served_from_the_cache(
    api: Api, client: Any, clean_db: str, how: str
) -> None:
    product = await api.product(price=100)
    user = await api.customer()
    await served_stale(api, client, clean_db, product["id"])
    call: dict[str, Any] = {"token": user.token} if how == "token" else {"headers": {"Cache-Control": "no-cache"}}
    fresh = await fresh_reads_until_cached(api, clean_db, product["id"], **call)
    assert fresh[0]  # the address's first fresh read is fresh
    assert not fresh[-1], fresh  # and a later one, past the limit, came from the cache


@pytest.mark.parametrize("config_overrides", [{"catalog_fresh_reads_per_ip": 1, "trusted_proxies": "127.0.0.1"}])
async def test_the_fresh_read_limit_is_per_client_address(api: Api, client: Any, clean_db: str) -> None:
    product = await api.product(price=100)
    await served_stale(api, client, clean_db, product["id"])
    reload = {"Cache-Control": "no-cache"}
    spent = await fresh_reads_until_cached(
        api, clean_db, product["id"], headers={**reload, "X-Forwarded-For": "203.0.113.1"}
    )
    assert not spent[-1], spent
    price = await silent_price_bump(clean_db, product["id"])
    other = await api.call(
        "GET", f"/api/products/{product['id']}", headers={**reload, "X-Forwarded-For": "203.0.113.2"}
    )
    assert other.json["price"] == price


@pytest.mark.parametrize("config_overrides", [{"catalog_fresh_reads_per_ip": 0}])
async def test_a_fresh_read_limit_of_zero_turns_it_off(api: Api, client: Any, clean_db: str) -> None:
    product = await api.product(price=100)
    await served_stale(api, client, clean_db, product["id"])
    fresh = []
    for _ in range(30):
        price = await silent_price_bump(clean_db, product["id"])
        reply = await api.call("GET", f"/api/products/{product['id']}", headers={"Cache-Control": "no-cache"})
        fresh.append(reply.json["price"] == price)
    assert all(fresh), fresh


@pytest.mark.parametrize("config_overrides", [{"catalog_cache_max_bytes": 0}])
async def test_with_the_cache_off_every_read_is_current(api: Api, clean_db: str) -> None:
    product = await api.product(price=100)
    await warm(api, f"/api/products/{product['id']}")
    await silent_update(clean_db, "UPDATE products SET price = 200 WHERE id = $1", product["id"])
    reply = await api.call("GET", f"/api/products/{product['id']}")
    assert reply.json["price"] == 200
    assert reply.headers["Cache-Control"] == "public, max-age=5"


@pytest.mark.parametrize("config_overrides", [{"catalog_cache_max_bytes": 4096}])
async def test_the_cache_stays_within_its_bytes(api: Api, client: Any) -> None:
    await cache_serving(client)
    products = [await api.product(description="x" * 500) for _ in range(20)]
    for product in products:
        await api.call("GET", f"/api/products/{product['id']}")
    cache = client.app[CONTEXT].catalog
    assert 0 < cache.size_bytes <= 4096
    assert (await scrape(api)).value("catalog_cache_evictions_total") > 0


# --- invalidation by every kind of change, seen at once by the process that made it ----------


@pytest.mark.parametrize("config_overrides", [SLOW_POLL])
async def test_an_order_moves_the_stock_that_reads_show(api: Api, client: Any) -> None:
    product = await api.product(stock=10)
    user = await api.customer()
    await cache_serving(client)
    list_before = (await warm(api, "/api/products")).headers["ETag"]
    await warm(api, f"/api/products/{product['id']}")
    assert (await api.order(user, (product["id"], 3))).status == 201
    assert await api.stock(product["id"]) == 7
    listed = await api.call("GET", "/api/products")
    assert listed.json["items"][0]["stock"] == 7
    assert listed.headers["ETag"] != list_before


@pytest.mark.parametrize("config_overrides", [SLOW_POLL])
async def test_a_cancellation_returns_stock_that_reads_show(api: Api, client: Any) -> None:
    product = await api.product(stock=10)
    user = await api.customer()
    order = (await api.order(user, (product["id"], 3))).json
    await cache_serving(client)
    await warm(api, f"/api/products/{product['id']}")
    reply = await api.call("PUT", f"/api/orders/{order['id']}", json={"status": "cancelled"}, token=user.token)
    assert reply.status == 200
    assert await api.stock(product["id"]) == 10


@pytest.mark.parametrize("config_overrides", [SLOW_POLL])
async def test_deleting_a_pending_order_returns_stock_that_reads_show(api: Api, client: Any) -> None:
    product = await api.product(stock=10)
    user = await api.customer()
    order = (await api.order(user, (product["id"], 4))).json
    await cache_serving(client)
    await warm(api, f"/api/products/{product['id']}")
    assert (await api.call("DELETE", f"/api/orders/{order['id']}", token=user.token)).status == 204
    assert await api.stock(product["id"]) == 10


@pytest.mark.parametrize(
    "config_overrides", [{**SLOW_POLL, "order_ttl_seconds": 1, "order_sweep_interval_seconds": 0.3}]
)
async def test_an_expiry_returns_stock_that_reads_show(api: Api, client: Any) -> None:
    product = await api.product(stock=10)
    user = await api.customer()
    order = (await api.order(user, (product["id"], 5))).json
    await cache_serving(client)
    await warm(api, f"/api/products/{product['id']}")
    assert await api.stock(product["id"]) == 5
    deadline = time.monotonic() + 10
    while (await api.call("GET", f"/api/orders/{order['id']}", token=user.token)).json["status"] != "expired":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await api.stock(product["id"]) == 10


@pytest.mark.parametrize("config_overrides", [SLOW_POLL])
async def test_an_admin_edit_is_seen_at_once(api: Api, client: Any) -> None:
    product = await api.product(price=100)
    admin = await api.admin_user()
    await cache_serving(client)
    await warm(api, f"/api/products/{product['id']}")
    await warm(api, "/api/products")
    await api.call("PUT", f"/api/products/{product['id']}", json={"price": 150}, token=admin.token)
    assert (await api.call("GET", f"/api/products/{product['id']}")).json["price"] == 150
    assert (await api.call("GET", "/api/products")).json["items"][0]["price"] == 150


@pytest.mark.parametrize("config_overrides", [SLOW_POLL])
async def test_a_deleted_product_is_gone_at_once(api: Api, client: Any) -> None:
    product = await api.product()
    admin = await api.admin_user()
    await cache_serving(client)
    await warm(api, f"/api/products/{product['id']}")
    await warm(api, "/api/products")
    assert (await api.call("DELETE", f"/api/products/{product['id']}", token=admin.token)).status == 204
    assert (await api.call("GET", f"/api/products/{product['id']}")).status == 404
    assert (await api.call("GET", "/api/products")).json["items"] == []


@pytest.mark.parametrize("config_overrides", [SLOW_POLL])
async def test_a_new_product_is_listed_at_once(api: Api, client: Any) -> None:
    await api.product(name="first")
    await cache_serving(client)
    await warm(api, "/api/products")
    await api.product(name="second")
    assert [p["name"] for p in (await api.call("GET", "/api/products")).json["items"]] == ["first", "second"]


async def within_one_second(api: Api, path: str, check: Any) -> float:
    """Seconds from now (just after the change) until a read of `path` that passes
    `check` was sent; fails when a read sent 1 s or more after the change does not.
    Counted to when each read is sent, not to when its answer arrives: on a busy
    machine an answer may take a while to come back, and what the contract bounds is
    how old the state it shows may be."""
    started = time.monotonic()
    while True:
        sent = time.monotonic() - started
        reply = await api.call("GET", path)
        if check(reply):
            return sent
        assert sent < 1.0, f"still stale in a read sent {sent:.3f} s after the change: {reply!r}"
        await asyncio.sleep(0.005)


async def test_a_change_by_any_other_writer_is_seen_within_one_second(api: Api, client: Any, clean_db: str) -> None:
    """Any transaction that changes products (here: SQL on its own connection, as a
    refund's restock or an operator would) invalidates through the trigger."""
    product = await api.product(stock=2)
    await cache_serving(client)
    await warm(api, f"/api/products/{product['id']}")
    await warm(api, "/api/products")
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE products SET stock = stock + 5, stock_received = stock_received + 5 WHERE id = $1",
                           product["id"])  # fmt: skip
    finally:
        await conn.close()
    await within_one_second(api, f"/api/products/{product['id']}", lambda r: r.json["stock"] == 7)
    await within_one_second(api, "/api/products", lambda r: r.json["items"][0]["stock"] == 7)


async def test_products_that_miss_the_cache_together_are_read_in_one_statement(api: Api, client: Any) -> None:
    """While one read runs, those that arrive meanwhile (here: in the same turn of the
    loop) are read together next; each gets the answer it would have had alone."""
    products = [await api.product(price=100 + n) for n in range(5)]
    alone = {p["id"]: (await api.call("GET", f"/api/products/{p['id']}")).body for p in products}
    missing = max(alone) + 1000
    ctx = client.app[CONTEXT]
    ctx.catalog.invalidate(None)  # every read below misses the cache
    before = await catalog_reads(api)
    wanted = [p["id"] for p in products] * 4 + [missing]
    answers = await asyncio.gather(*(catalog.product(ctx, pid, fresh=False) for pid in wanted), return_exceptions=True)
    after = await catalog_reads(api)
    assert after["primary"] - before["primary"] == 2  # the first alone, the other 20 together
    for pid, answer in zip(wanted, answers, strict=True):
        if pid == missing:
            assert isinstance(answer, Refusal) and answer.code == "product_not_found"
        else:
            assert isinstance(answer, Representation) and answer.body == alone[pid]


# --- the watch: down means not serving -------------------------------------------------------


async def test_a_killed_watch_connection_stops_stale_reads(api: Api, client: Any, clean_db: str) -> None:
    product = await api.product(price=100)
    new = await served_stale(api, client, clean_db, product["id"])
    conn = await asyncpg.connect(clean_db)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'storefront-catalog-watch' AND datname = current_database()"
        )
    finally:
        await conn.close()
    assert killed == 1
    # Down, then back: either way the stale entry is never served again.
    await within_one_second(api, f"/api/products/{product['id']}", lambda r: r.json["price"] == new)
    for _ in range(20):
        assert (await api.call("GET", f"/api/products/{product['id']}")).json["price"] == new
        await asyncio.sleep(0.05)


async def test_while_the_serving_loop_is_busy_the_watch_applies_changes_and_the_cache_serves_on(
    api: Api, client: Any, clean_db: str
) -> None:
    """Under a thousand connections one turn of the serving loop may take longer than
    the cache may serve without a poll. The watch polls on a thread of its own, so
    while the serving loop never turns (here: busy in Python, giving up the interpreter
    lock only as the interpreter makes it), changes are still applied and the cache
    goes on serving what did not change."""
    changed, unchanged = await api.product(price=100), await api.product(price=200)
    cache = client.app[CONTEXT].catalog
    # Else the watch's news of the creations could drop the entries warmed below.
    await watch_poll_after(cache, time.monotonic())
    for product in (changed, unchanged):
        await warm(api, f"/api/products/{product['id']}")
    conn = await asyncpg.connect(clean_db)
    try:
        await conn.execute("UPDATE products SET price = 101 WHERE id = $1", changed["id"])
    finally:
        await conn.close()
    committed = time.monotonic()
    # No await from here on: the serving loop does not turn until a poll begun well
    # past the cache's stale bound after the change has been applied.
    deadline = committed + 30
    while not (cache.serving and watch_polled_since(cache, committed + 2 * STALE_BOUND_SECONDS)):
        assert time.monotonic() < deadline, "the watch made no poll while the serving loop was busy"
    assert changed["id"] not in cache._entries
    assert unchanged["id"] in cache._entries


# --- across processes -------------------------------------------------------------------------


async def test_a_change_through_one_process_is_seen_through_another_within_one_second(
    apis: list[Api],
) -> None:
    writer, reader = apis
    product = await writer.product(price=100, stock=10)
    user = await writer.customer()
    admin = await writer.admin_user()
    path = f"/api/products/{product['id']}"
    await asyncio.sleep(1.0)  # both watches are up (first poll within 0.2 s of the start)
    await warm(reader, path)
    await warm(reader, "/api/products")

    reply = await writer.call("PUT", path, json={"price": 150}, token=admin.token)
    assert reply.status == 200
    edit = await within_one_second(reader, path, lambda r: r.json["price"] == 150)
    assert (await warm(reader, path)).json["price"] == 150

    assert (await writer.order(user, (product["id"], 4))).status == 201
    order = await within_one_second(reader, path, lambda r: r.json["stock"] == 6)
    listed = await within_one_second(reader, "/api/products", lambda r: r.json["items"][0]["stock"] == 6)
    print(f"seen by the other process after: edit {edit:.3f} s, order {order:.3f} s, list {listed:.3f} s")
