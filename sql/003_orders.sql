CREATE TABLE orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id),
    status      text        NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'expired')),
    total       bigint      NOT NULL CHECK (total >= 0),
    currency    text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Set while pending (the contract's expires_at), NULL in every other status.
    expires_at  timestamptz,
    -- DELETE hides an order (pending ones return their stock first) but keeps the row,
    -- so that payments keep their history.
    deleted_at  timestamptz,
    CHECK ((status = 'pending') = (expires_at IS NOT NULL))
);

-- A customer's orders, newest first (the list's keyset order).
CREATE INDEX orders_user_id_idx ON orders (user_id, id) WHERE deleted_at IS NULL;
-- The expiry sweeper's work list.
CREATE INDEX orders_pending_expiry_idx ON orders (expires_at) WHERE status = 'pending';

CREATE TABLE order_items (
    order_id    bigint   NOT NULL REFERENCES orders (id),
    line_no     smallint NOT NULL,
    product_id  bigint   NOT NULL REFERENCES products (id),
    -- Snapshots taken when the line was written: later product edits do not change them.
    name        text     NOT NULL,
    unit_price  bigint   NOT NULL CHECK (unit_price >= 0),
    quantity    integer  NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    line_total  bigint   NOT NULL CHECK (line_total = unit_price * quantity),
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, product_id)
);

CREATE INDEX order_items_product_id_idx ON order_items (product_id);
