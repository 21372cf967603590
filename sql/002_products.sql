-- The catalog. Deleting a product only sets deleted_at: order lines keep pointing
-- at the row, and the sku becomes free again (the unique index covers live rows).
CREATE TABLE products (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    description  text        NOT NULL DEFAULT '' CHECK (char_length(description) <= 5000),
    price        bigint      NOT NULL CHECK (price >= 0),
    currency     text        NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    stock        integer     NOT NULL CHECK (stock >= 0),
    -- Units ever put on the shelf (creation plus every admin change of stock): the
    -- stock invariant is stock_received = stock + held by pending orders + sold.
    stock_received bigint    NOT NULL,
    sku          text        CHECK (char_length(sku) BETWEEN 1 AND 64),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);

CREATE UNIQUE INDEX products_sku_live_key ON products (sku) WHERE deleted_at IS NULL;

-- One index per sort, each ending in id (the tie-breaker of the keyset cursor), over
-- live rows only: every sort of the list is an index scan that stops after a page.
CREATE INDEX products_created_at_idx ON products (created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX products_price_idx      ON products (price, id)      WHERE deleted_at IS NULL;
CREATE INDEX products_name_idx       ON products (name, id)       WHERE deleted_at IS NULL;

-- `q` (case-insensitive substring of the name) uses a trigram index where the
-- server ships pg_trgm (every PostgreSQL package with contrib does; the embedded
-- pgserver wheel does not, and there the filter still works, unindexed).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX products_name_trgm_idx ON products USING gin (name gin_trgm_ops)
            WHERE deleted_at IS NULL;
    ELSE
        RAISE NOTICE 'pg_trgm is not available: product search by name is not indexed';
    END IF;
END
$$;
