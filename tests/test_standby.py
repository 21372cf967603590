"""Read routing to a standby (DATABASE_READ_URL): the freshness rule, and the fallback
to the primary.

The rule is pure logic and tested here on its own. The routing decisions are tested
in process with a "standby" whose pools are the primary's database and whose
coverage the test sets by hand (so a read counted as the standby's went there because
the rule allowed it). Reads from a real streaming standby (freshness through nginx
within 1 s, the fallback while it is stopped, the return once it has caught up) run
on scripts/stack.sh's stack, in the fault suite (tests/test_stack_drills.py): a
standby needs a primary of its own. The last tests check that a standby that is
down, or a server that is not a standby, is never read, and every read is answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from db.pool import create_database
from handlers.routing import CONTEXT
from server.domain.catalog_cache import CHANGE_MEMORY_SECONDS, CatalogCache
from server.runtime.config import Config, pool_settings
from server.runtime.metrics import Metrics
from server.runtime.ports import free_port
from server.runtime.standby import Coverage, Standby
from tests.helpers import Api, catalog_reads, scrape, watch_poll_after

# --- the rule ------------------------------------------------------------------------


def test_the_standby_covers_a_moment_once_it_has_replayed_what_was_written_by_then() -> None:
    coverage = Coverage()
    coverage.primary_at(10.0, 1000)
    coverage.primary_at(10.1, 2000)
    coverage.standby_replayed(1500)
    assert coverage.covered_at == 10.0
    coverage.standby_replayed(2000)
    assert coverage.covered_at == 10.1


def test_a_standby_that_has_replayed_nothing_sampled_covers_nothing() -> None:
    coverage = Coverage()
    coverage.primary_at(10.0, 1000)
    coverage.standby_replayed(999)
    assert coverage.covered_at == -math.inf
    assert not coverage.covers(-math.inf, max_lag=0.5, now=10.0)


def test_a_standby_lagging_past_the_bound_is_not_read() -> None:
    coverage = Coverage()
    coverage.primary_at(10.0, 1000)
    coverage.standby_replayed(1000)
    assert coverage.covers(-math.inf, max_lag=0.5, now=10.5)
    assert not coverage.covers(-math.inf, max_lag=0.5, now=10.51)


def test_a_standby_is_not_read_for_a_change_it_may_not_have() -> None:
    coverage = Coverage()
    coverage.primary_at(10.0, 1000)
    coverage.standby_replayed(1000)
    assert coverage.covers(9.99, max_lag=0.5, now=10.1)
    assert not coverage.covers(10.0, max_lag=0.5, now=10.1)  # the same clock value: order unknown
    assert not coverage.covers(10.01, max_lag=0.5, now=10.1)  # changed after the last moment covered


def test_an_insert_position_just_past_a_page_header_is_reached_at_the_page_start() -> None:
    page = 8192 * 1000
    coverage = Coverage()
    coverage.primary_at(10.0, page + 24)  # an idle primary whose last record ended at the page's end
    coverage.standby_replayed(page)
    assert coverage.covered_at == 10.0
    coverage.primary_at(11.0, page + 8192 + 64)  # a record written on the next page
    coverage.standby_replayed(page + 8192)
    assert coverage.covered_at == 10.0


def test_a_lost_standby_covers_nothing_until_it_is_sampled_again() -> None:
    coverage = Coverage()
    coverage.primary_at(10.0, 1000)
    coverage.standby_replayed(1000)
    coverage.lost()
    coverage.standby_replayed(5000)  # samples from before the loss are gone
    assert coverage.covered_at == -math.inf
    coverage.primary_at(11.0, 5000)
    coverage.standby_replayed(5000)
    assert coverage.covered_at == 11.0


def test_the_cache_records_its_own_writes_apart_from_changes_it_learns_of() -> None:
    cache = CatalogCache(1 << 20, Metrics())
    before = time.monotonic()
    cache.invalidate([1])  # learned from the watch
    cache.invalidate([2], own=True)
    assert cache.known_changes.of_product(1) >= before and cache.known_changes.of_product(2) >= before
    assert cache.own_changes.of_product(1) == -math.inf
    assert cache.own_changes.of_product(2) >= before
    assert cache.known_changes.of_product(3) == -math.inf  # unchanged: any standby within bound will do
    assert cache.known_changes.of_any() >= before and cache.own_changes.of_any() >= before


def test_a_change_of_everything_holds_back_every_product_and_list() -> None:
    cache = CatalogCache(1 << 20, Metrics())
    before = time.monotonic()
    cache.invalidate(None, own=True)
    for changes in (cache.own_changes, cache.known_changes):
        assert changes.of_product(42) >= before and changes.of_any() >= before


def test_change_times_older_than_any_standby_read_may_be_are_forgotten() -> None:
    cache = CatalogCache(1 << 20, Metrics())
    now = time.monotonic()
    changes = cache.known_changes
    changes.record([1], now - 3 * CHANGE_MEMORY_SECONDS)
    changes.record([2], now)
    assert changes.of_product(1) == -math.inf
    assert changes.of_product(2) == now


# --- where reads go -------------------------------------------------------------------


@pytest.fixture
async def standby(client: TestClient[Any, Any], config: Config) -> AsyncIterator[Standby]:
    """A standby for the app whose pools are its own database and whose coverage the
    test sets (no monitor runs)."""
    settings = dataclasses.replace(pool_settings(config, config.database_url or ""), min_size=0, max_size=2)
    replica = Standby(
        await create_database(settings), await create_database(settings), Coverage(), Metrics(), max_lag=0.5
    )
    ctx = client.app[CONTEXT]
    ctx.standby = replica
    yield replica
    ctx.standby = None
    await replica.close(timeout=5)


def covered_until(replica: Standby, moment: float) -> None:
    """The standby has replayed everything committed before `moment`."""
    coverage = replica._coverage
    coverage.primary_at(moment, 0)
    coverage.standby_replayed(0)


async def test_an_anonymous_read_goes_to_a_standby_that_shows_what_it_needs(api: Api, standby: Standby) -> None:
    product = await api.product()
    covered_until(standby, time.monotonic())
    before = await catalog_reads(api)
    assert (await api.call("GET", f"/api/products/{product['id']}")).status == 200
    after = await catalog_reads(api)
    assert after.get("standby", 0) - before.get("standby", 0) == 1
    assert after.get("primary", 0) == before.get("primary", 0)


async def test_an_authenticated_read_goes_to_the_primary(api: Api, standby: Standby) -> None:
    product = await api.product()
    covered_until(standby, time.monotonic())
    user = await api.customer()
    before = await catalog_reads(api)
    assert (await api.call("GET", f"/api/products/{product['id']}", token=user.token)).status == 200
    after = await catalog_reads(api)
    assert after.get("standby", 0) == before.get("standby", 0)


async def test_a_read_of_its_own_last_write_goes_to_the_primary_until_the_standby_shows_it(
    api: Api, standby: Standby
) -> None:
    product = await api.product()
    covered_until(standby, time.monotonic())
    admin = await api.admin_user()
    change = await api.call("PUT", f"/api/products/{product['id']}", json={"price": 4321}, token=admin.token)
    assert change.status == 200  # this process's own write, after the moment covered
    before = await catalog_reads(api)
    assert (await api.call("GET", f"/api/products/{product['id']}")).json["price"] == 4321
    middle = await catalog_reads(api)
    assert middle.get("primary", 0) - before.get("primary", 0) == 1
    assert middle.get("standby", 0) == before.get("standby", 0)
    covered_until(standby, time.monotonic())
    assert (await api.call("GET", "/api/products?limit=7")).status == 200  # a list: not cached yet
    after = await catalog_reads(api)
    assert after.get("standby", 0) - middle.get("standby", 0) == 1


async def test_a_lagging_standby_is_passed_over(api: Api, standby: Standby) -> None:
    product = await api.product()
    covered_until(standby, time.monotonic() - 0.6)  # the bound is 0.5 s
    before = await catalog_reads(api)
    assert (await api.call("GET", f"/api/products/{product['id']}")).status == 200
    after = await catalog_reads(api)
    assert after.get("primary", 0) - before.get("primary", 0) == 1
    assert after.get("standby", 0) == before.get("standby", 0)


async def test_a_standby_read_older_than_a_change_the_cache_knows_of_is_not_kept(
    api: Api, client: Any, standby: Standby
) -> None:
    product = await api.product()
    cache: CatalogCache = client.app[CONTEXT].catalog
    # The watch has applied the product's own creation: applied later, on a busy
    # machine, it would be a newer change than the coverage set below.
    await watch_poll_after(cache, time.monotonic())
    covered_until(standby, time.monotonic())
    await asyncio.sleep(0.05)
    cache.invalidate([product["id"]])  # another writer's change, seen by the watch
    before = await catalog_reads(api)
    for _ in range(2):  # read from the standby, not kept: each goes to the database
        assert (await api.call("GET", f"/api/products/{product['id']}")).status == 200
    middle = await catalog_reads(api)
    assert middle.get("standby", 0) - before.get("standby", 0) == 2
    covered_until(standby, time.monotonic())  # now it shows that change: kept
    for _ in range(2):
        assert (await api.call("GET", f"/api/products/{product['id']}")).status == 200
    after = await catalog_reads(api)
    assert after.get("standby", 0) - middle.get("standby", 0) == 1


async def test_a_product_missing_on_the_standby_is_404_without_a_second_read(api: Api, standby: Standby) -> None:
    covered_until(standby, time.monotonic())
    before = await catalog_reads(api)
    assert (await api.call("GET", "/api/products/987654321")).status == 404
    after = await catalog_reads(api)
    assert after == before  # neither counted: the standby answered, and nothing fell back


# --- no usable standby ---------------------------------------------------------------


async def standby_lag(api: Api) -> float:
    (lag,) = (await scrape(api)).samples("standby_lag_seconds")
    return lag.value


async def wait_for_monitor(client: TestClient[Any, Any]) -> None:
    """Until the standby monitor has given its verdict (a try or two)."""
    await asyncio.sleep(1.2)
    assert client.app[CONTEXT].standby is not None


@pytest.mark.parametrize(
    "config_overrides", [{"database_read_url": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}]
)
async def test_with_the_standby_down_every_read_goes_to_the_primary(api: Api, client: Any) -> None:
    await wait_for_monitor(client)
    product = await api.product()
    assert (await api.call("GET", f"/api/products/{product['id']}")).status == 200
    assert (await api.call("GET", "/api/products?limit=3")).status == 200
    assert (await api.call("GET", "/api/products?q=Widget")).status == 200  # a search, on its own pool
    reads = await catalog_reads(api)
    assert reads.get("primary", 0) >= 3
    assert reads.get("standby", 0) == 0
    assert await standby_lag(api) == math.inf


@pytest.fixture
def config_overrides(clean_db: str) -> dict[str, Any]:
    """The primary named as the standby: a server that is not in recovery."""
    return {"database_read_url": clean_db}


async def test_a_server_that_is_not_a_standby_is_never_read(api: Api, client: Any) -> None:
    await wait_for_monitor(client)
    product = await api.product()
    await asyncio.sleep(0.3)
    assert (await api.call("GET", f"/api/products/{product['id']}")).status == 200
    reads = await catalog_reads(api)
    assert reads.get("primary", 0) >= 1
    assert reads.get("standby", 0) == 0
    assert await standby_lag(api) == math.inf
