-- Refunds: money going back on a succeeded payment, in parts that add up, never more
-- than was charged; the `refunded` order status; and the owner of in-flight work.

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'expired', 'refunded'));
-- What the order's payment has refunded (the order representation's amount_refunded).
ALTER TABLE orders ADD COLUMN amount_refunded bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0);

-- The ceiling, kept on the payment row itself: a refund reserves its amount here (in
-- the transaction that records it pending, under the row's lock) and moves it to
-- amount_refunded when it succeeds or gives it back when it fails. Whatever the
-- number of processes, succeeded + in-flight refunds never exceed the amount.
ALTER TABLE payments
    ADD COLUMN amount_refunded       bigint NOT NULL DEFAULT 0,
    ADD COLUMN amount_refund_pending bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT payments_refund_ceiling CHECK (
        amount_refunded >= 0 AND amount_refund_pending >= 0
        AND amount_refunded + amount_refund_pending <= amount
    ),
    -- While pending: the liveness lock id of the process working on it (see
    -- server/runtime/liveness.py). When that lock is free, the process is gone and
    -- the reconciler settles the payment at once instead of waiting for the lease.
    ADD COLUMN owner integer;

CREATE TABLE refunds (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id     bigint      NOT NULL REFERENCES payments (id),
    order_id       bigint      NOT NULL REFERENCES orders (id),
    requested_by   bigint      NOT NULL REFERENCES users (id),
    amount         bigint      NOT NULL CHECK (amount >= 1),
    currency       text        NOT NULL,
    status         text        NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'succeeded', 'failed')),
    reason         text        CHECK (char_length(reason) <= 500),
    -- Return every unit of the order to stock when this (completing) refund succeeds.
    restock        boolean     NOT NULL DEFAULT false,
    failure_reason text,
    -- The provider-side idempotency key: asking the provider with it tells what became
    -- of a refund whose answer was lost.
    provider_key   text        NOT NULL UNIQUE,
    provider_ref   text,
    owner          integer,
    lease_until    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- A payment's refunds, oldest first (the list's keyset order).
CREATE INDEX refunds_payment_id_idx ON refunds (payment_id, id);
CREATE INDEX refunds_pending_lease_idx ON refunds (lease_until) WHERE status = 'pending';
-- Restocking happens once per order: only one succeeded refund of a payment restocks.
CREATE UNIQUE INDEX refunds_one_restock_per_payment ON refunds (payment_id) WHERE restock AND status = 'succeeded';

-- An Idempotency-Key record names the payment or the refund it started, or holds
-- the response of a request that ended before either was made.
ALTER TABLE idempotency_keys ADD COLUMN refund_id bigint REFERENCES refunds (id);
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_check;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_one_outcome
    CHECK (num_nonnulls(payment_id, refund_id, response_status) <= 1);

-- The simulated provider's refunds ledger, one row per refund idempotency key. A
-- charge's refunds were a single refund_reference before; they move here (under the
-- key the service used for them).
CREATE TABLE simulated_provider_refunds (
    idempotency_key  text        PRIMARY KEY,
    reference        text        NOT NULL UNIQUE,
    charge_reference text        NOT NULL,
    amount           bigint      NOT NULL,
    status           text        NOT NULL CHECK (status IN ('succeeded', 'failed', 'voided')),
    failure_reason   text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX simulated_provider_refunds_charge_idx ON simulated_provider_refunds (charge_reference);

INSERT INTO simulated_provider_refunds (idempotency_key, reference, charge_reference, amount, status)
SELECT 'refund_' || p.id, c.refund_reference, c.reference, c.amount, 'succeeded'
FROM simulated_provider_charges c JOIN payments p ON p.provider_key = c.idempotency_key
WHERE c.refund_reference IS NOT NULL;
ALTER TABLE simulated_provider_charges DROP COLUMN refund_reference;

-- A charge made with the test card tok_refundFail: every refund of it fails.
ALTER TABLE simulated_provider_charges ADD COLUMN refundable boolean NOT NULL DEFAULT true;
-- A lookup that finds no charge for a key voids the key, so that a call still on its
-- way (from a process that died, or timed out) can never charge after it: "not
-- found" is then final, and reconciliation may act on it at once.
ALTER TABLE simulated_provider_charges DROP CONSTRAINT simulated_provider_charges_status_check;
ALTER TABLE simulated_provider_charges ADD CONSTRAINT simulated_provider_charges_status_check
    CHECK (status IN ('succeeded', 'declined', 'voided'));
