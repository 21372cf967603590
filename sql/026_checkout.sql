-- Checkout (the contract's "Checkout: addresses, shipping and discount codes"): the
-- address book, shipping methods, discount codes, and what an order ships to, with and
-- for how much. The functions that price and redeem them: sql/functions/checkout.sql.

-- A postal address as an order keeps it (a snapshot: later edits of the address book
-- change no order); the address book's rows have the same fields.
CREATE TYPE postal_address AS (
    name        text,
    line1       text,
    line2       text,
    city        text,
    region      text,
    postal_code text,
    country     text,
    phone       text
);
-- An order's shipping method and discount as the order keeps them (snapshots).
CREATE TYPE order_shipping_method AS (id bigint, name text, price bigint);
CREATE TYPE order_discount AS (code text, amount bigint);

-- The address book: at most 20 per user (create_address counts them under the user's
-- row lock). `country` is an ISO 3166-1 alpha-2 code that exists (checked by the API).
CREATE TABLE addresses (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id),
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    line1       text        NOT NULL CHECK (char_length(line1) BETWEEN 1 AND 200),
    line2       text        NOT NULL DEFAULT '' CHECK (char_length(line2) <= 200),
    city        text        NOT NULL CHECK (char_length(city) BETWEEN 1 AND 100),
    region      text        NOT NULL DEFAULT '' CHECK (char_length(region) <= 100),
    postal_code text        NOT NULL CHECK (char_length(postal_code) BETWEEN 1 AND 20),
    country     text        NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    phone       text        NOT NULL DEFAULT '' CHECK (char_length(phone) <= 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A user's addresses, oldest first (the list's keyset order).
CREATE INDEX addresses_user_id_idx ON addresses (user_id, id);

-- Shipping methods: a flat price in one currency, to the listed countries ('{}':
-- anywhere), free from a subtotal of free_over. Deleting one only sets deleted_at:
-- orders keep their snapshot of it.
CREATE TABLE shipping_methods (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    price       bigint      NOT NULL CHECK (price >= 0),
    currency    text        NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    countries   text[]      NOT NULL DEFAULT '{}',
    free_over   bigint      CHECK (free_over >= 0),
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Discount codes. A code's times_redeemed is the number of orders holding it (pending)
-- or having used it (paid and later). For a code with max_redemptions it is also kept
-- in `redeemed`, under the row's lock, by the orders that take or give back the code
-- (its takers decide one after the other: the limit is exact, and the CHECK backs it);
-- a code without one is counted from its orders when it is read, so the orders using a
-- popular code write nothing to its row (sql/functions/checkout.sql). Deleting a code
-- only sets deleted_at (orders keep their discount, and the code becomes free again:
-- the unique index covers live rows).
CREATE TABLE discounts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code             text        NOT NULL CHECK (code ~ '^[A-Z0-9_-]{3,32}$'),
    kind             text        NOT NULL CHECK (kind IN ('percent', 'fixed')),
    value            bigint      NOT NULL,
    currency         text        NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    min_subtotal     bigint      NOT NULL DEFAULT 0 CHECK (min_subtotal >= 0),
    starts_at        timestamptz,
    ends_at          timestamptz,
    max_redemptions  integer     CHECK (max_redemptions >= 0),
    max_per_customer integer     CHECK (max_per_customer >= 1),
    redeemed         integer     NOT NULL DEFAULT 0 CHECK (redeemed >= 0),
    enabled          boolean     NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    CONSTRAINT discounts_value_check
        CHECK ((kind = 'percent' AND value BETWEEN 1 AND 100) OR (kind = 'fixed' AND value >= 1)),
    CONSTRAINT discounts_window_check CHECK (ends_at > starts_at),
    CONSTRAINT discounts_redemptions_check CHECK (redeemed <= max_redemptions)
);

CREATE UNIQUE INDEX discounts_code_live_key ON discounts (code) WHERE deleted_at IS NULL;

-- What an order ships to and with, and its discount. `subtotal` is the sum of its
-- items, so that `total` (the amount to pay, what payments charge) is subtotal -
-- discount + shipping by construction; an order without them has subtotal = total,
-- as before.
ALTER TABLE orders
    ADD COLUMN shipping_address postal_address,
    ADD COLUMN shipping_method  order_shipping_method,
    ADD COLUMN shipping         bigint NOT NULL DEFAULT 0 CHECK (shipping >= 0),
    -- No foreign key: the id is always the one of a code the same call found and
    -- locked, codes are never deleted (only hidden), and the check would lock the
    -- code's row a second time in every order that uses it (check-invariants looks).
    ADD COLUMN discount_id      bigint,
    ADD COLUMN discount         order_discount CHECK ((discount).amount >= 0),
    ADD COLUMN subtotal         bigint GENERATED ALWAYS AS (total - shipping + coalesce((discount).amount, 0)) STORED,
    ADD CONSTRAINT orders_discount_id_check CHECK ((discount_id IS NULL) = (discount IS NULL));

-- The orders holding or having used a discount (the statuses order_status.REDEEMS
-- names), per customer: times_redeemed and the per-customer limit count them.
CREATE INDEX orders_redeeming_idx ON orders (discount_id, user_id)
    WHERE discount_id IS NOT NULL AND status NOT IN ('cancelled', 'expired');
