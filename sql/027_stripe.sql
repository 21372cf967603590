-- The Stripe provider. A payment may wait for its customer (3-D Secure): the status
-- `requires_action`, with what the app needs to finish it (Stripe's client_secret and
-- next_action). Such a payment still blocks a second one of its order (the partial
-- unique index now covers both statuses in flight), but it no longer holds the order:
-- the order may expire or be cancelled while it waits, and its PaymentIntent is then
-- cancelled by the reconciler (the waiting payment of an order that is no longer
-- pending is the durable to-do: nothing is lost if a process dies in between).
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'requires_action', 'succeeded', 'failed'));
ALTER TABLE payments
    ADD COLUMN client_secret text,
    ADD COLUMN next_action jsonb,
    -- The payment method the customer gave (a Stripe PaymentMethod id or card token: a
    -- reference, not card data): a charge whose answer was lost is asked about by
    -- replaying the very same request under its idempotency key.
    ADD COLUMN payment_method text;
DROP INDEX payments_one_pending_per_order;
CREATE UNIQUE INDEX payments_one_pending_per_order ON payments (order_id)
    WHERE status IN ('pending', 'requires_action');
CREATE INDEX payments_requires_action_idx ON payments (order_id) WHERE status = 'requires_action';

-- A refund the provider reports failed after it had succeeded (asynchronous failure)
-- is undone: `order_status_before` keeps the status an order had before this refund
-- made it `refunded` (it returns to it), `restocked` that this refund put the units
-- back (they stay in stock, and no later refund of the payment restocks again).
ALTER TABLE refunds
    ADD COLUMN order_status_before text,
    ADD COLUMN restocked boolean NOT NULL DEFAULT false;
UPDATE refunds SET restocked = true WHERE restock AND status = 'succeeded';

-- Events received from the provider (Stripe's event ids), each handled once.
CREATE TABLE provider_events (
    id          text        PRIMARY KEY,
    type        text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_events_received_at_idx ON provider_events (received_at);
