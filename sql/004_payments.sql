CREATE TABLE payments (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id         bigint      NOT NULL REFERENCES orders (id),
    user_id          bigint      NOT NULL REFERENCES users (id),
    amount           bigint      NOT NULL CHECK (amount >= 0),
    currency         text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_reason   text,
    provider         text        NOT NULL,
    -- The provider-side idempotency key of the charge: asking the provider with it
    -- tells what became of a charge whose answer was lost (crash, timeout).
    provider_key     text        NOT NULL UNIQUE,
    provider_ref     text,
    -- Set when a charge that succeeded could not be applied and was refunded.
    refund_ref       text,
    -- While pending: until when the process that made it may still finish it; after
    -- that the reconciler takes over.
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Exactly one charge per order, whatever the number of processes: at most one
-- payment in flight and at most one that succeeded.
CREATE UNIQUE INDEX payments_one_pending_per_order ON payments (order_id) WHERE status = 'pending';
CREATE UNIQUE INDEX payments_one_success_per_order ON payments (order_id) WHERE status = 'succeeded';
CREATE INDEX payments_pending_lease_idx ON payments (lease_until) WHERE status = 'pending';

-- Idempotency-Key records, per user. A record names the payment it started, or
-- holds the response of a request that ended before any payment was made.
CREATE TABLE idempotency_keys (
    user_id          bigint      NOT NULL REFERENCES users (id),
    key              text        NOT NULL,
    request_hash     bytea       NOT NULL,
    payment_id       bigint      REFERENCES payments (id),
    response_status  smallint,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key),
    CHECK (payment_id IS NULL OR response_status IS NULL)
);

CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- The simulated provider's own ledger. It stands for the gateway's records, which a
-- crash of this service cannot erase: reconciliation asks it what really happened.
CREATE TABLE simulated_provider_charges (
    idempotency_key  text        PRIMARY KEY,
    reference        text        NOT NULL UNIQUE,
    amount           bigint      NOT NULL,
    currency         text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('succeeded', 'declined')),
    failure_reason   text,
    refund_reference text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
