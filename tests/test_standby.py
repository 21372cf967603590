"""Read routing to a standby (DATABASE_READ_URL): the freshness rule, and the fallback
to the primary.

The rule is pure logic and tested here on its own. Reads from a real streaming
standby (freshness through nginx within 1 s, the fallback while it is stopped, the
return once it has caught up) run on scripts/stack.sh's stack, in the fault suite
(tests/test_stack_drills.py): a standby needs a primary of its own. The in-process
tests below check what needs no standby: a standby that is down, or a server that
is not a standby, is never read, and every read is still answered.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.domain.catalog_cache import CHANGE_MEMORY_SECONDS, CatalogCache
from server.domain.context import CONTEXT
from server.runtime.metrics import Metrics
from server.runtime.standby import Coverage
from tests.helpers import Api, free_port

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
    assert not coverage.covers(10.01, max_lag=0.5, now=10.1)  # changed after the last moment covered


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


def test_the_cache_remembers_when_it_learned_of_each_change() -> None:
    cache = CatalogCache(1 << 20, Metrics())
    assert cache.product_changed_at(1) == -math.inf and cache.list_changed_at() == -math.inf
    before = time.monotonic()
    cache.invalidate([1])
    assert cache.product_changed_at(1) >= before
    assert cache.product_changed_at(2) == -math.inf  # another product: any standby in bound will do
    assert cache.list_changed_at() >= before  # a list may show any product


def test_a_change_of_everything_holds_back_every_standby_read() -> None:
    cache = CatalogCache(1 << 20, Metrics())
    before = time.monotonic()
    cache.invalidate(None)
    assert cache.product_changed_at(42) >= before and cache.list_changed_at() >= before


def test_the_cache_forgets_changes_older_than_any_standby_read_may_be() -> None:
    cache = CatalogCache(1 << 20, Metrics())
    cache.invalidate([1])
    cache._changed_at[1] -= 2 * CHANGE_MEMORY_SECONDS  # as if long ago
    cache._forgotten_at -= 2 * CHANGE_MEMORY_SECONDS
    cache.invalidate([2])
    assert cache.product_changed_at(1) == -math.inf
    assert cache.product_changed_at(2) > -math.inf


# --- no usable standby ---------------------------------------------------------------


async def catalog_reads(api: Api) -> dict[str, float]:
    reply = await api.call("GET", "/metrics")
    reads: dict[str, float] = {}
    for line in reply.body.decode().splitlines():
        if line.startswith("catalog_reads_total{"):
            reads[line.split('target="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return reads


async def standby_lag(api: Api) -> float:
    reply = await api.call("GET", "/metrics")
    (line,) = [line for line in reply.body.decode().splitlines() if line.startswith("standby_lag_seconds ")]
    return float(line.rsplit(" ", 1)[1])


async def wait_for_monitor(client: TestClient[Any, Any]) -> None:
    """Until the standby monitor has given its verdict (a try or two)."""
    await asyncio.sleep(1.2)
    assert client.server.app[CONTEXT].standby is not None


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
