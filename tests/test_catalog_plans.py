"""The plan check of loadtests/catalog_plans.py, on plans as PostgreSQL prints them."""

from __future__ import annotations

from loadtests.catalog_plans import _acceptable

WALK_SORT_INDEX = """Limit  (cost=0.42..2.10 rows=21 width=300) (actual time=0.02..0.05 rows=21 loops=1)
  Buffers: shared hit=24
  ->  Index Scan using products_name_idx on products  (cost=0.42..80000.00 rows=1000000 width=300)
        Filter: (stock > 0)
        Buffers: shared hit=24"""

SORT_OVER_WALK = """Limit  (cost=9000.00..9000.05 rows=21 width=300) (actual time=300.0..300.1 rows=21 loops=1)
  ->  Sort  (cost=9000.00..9500.00 rows=200000 width=300) (actual time=300.0..300.0 rows=21 loops=1)
        Sort Key: name, id
        Sort Method: top-N heapsort  Memory: 35kB
        Buffers: shared hit=5000
        ->  Index Scan using products_price_idx on products  (cost=0.42..8000.00 rows=200000 width=300)
              Index Cond: (price >= 20000)"""

SORT_OVER_MATCHES = """Limit  (cost=90.00..90.05 rows=6 width=300) (actual time=4.7..4.7 rows=6 loops=1)
  ->  Sort  (cost=90.00..90.02 rows=6 width=300) (actual time=4.7..4.7 rows=6 loops=1)
        Sort Key: created_at, id
        Sort Method: quicksort  Memory: 27kB
        ->  Bitmap Heap Scan on products  (cost=60.00..89.00 rows=6 width=300)
              Recheck Cond: (name ~~* '%oak chair 123%'::text)
              ->  Bitmap Index Scan on products_name_trgm_idx  (cost=0.00..60.00 rows=6 width=0)"""

SEQUENTIAL = """Limit  (cost=0.00..1.00 rows=21 width=300) (actual time=0.01..0.02 rows=21 loops=1)
  ->  Seq Scan on products  (cost=0.00..50000.00 rows=1000000 width=300)
        Filter: (deleted_at IS NULL)"""


def test_a_walk_of_the_sort_index_is_accepted() -> None:
    assert _acceptable(WALK_SORT_INDEX)


def test_a_sort_over_the_rows_a_search_found_is_accepted() -> None:
    assert _acceptable(SORT_OVER_MATCHES)


def test_a_sort_over_a_walk_of_another_sort_index_is_refused() -> None:
    assert not _acceptable(SORT_OVER_WALK)


def test_a_sequential_scan_is_refused() -> None:
    assert not _acceptable(SEQUENTIAL)
