-- Abuse limits (the contract's "Abuse limits"): state every process shares. The
-- functions that count and judge attempts: sql/functions/rate_limits.sql.

-- Attempt counters for throttled keys ("pair:<email>|<address>", "email:<email>",
-- "ip:<address>", "register:<address>"). An attempt is counted (and admitted or
-- refused) under the key's row lock before the expensive work it guards, so
-- simultaneous attempts cannot all pass a check made before any was recorded.
--   attempts      admitted attempts in the current window
--   window_start  start of the fixed window (a new one opens once it has ended)
--   not_before    keys with growing delays: the next attempt is refused before this
CREATE UNLOGGED TABLE rate_limits (
    key           text        PRIMARY KEY,
    attempts      integer     NOT NULL,
    window_start  timestamptz NOT NULL,
    not_before    timestamptz NOT NULL
);

-- Replaced by rate_limits (which counts attempts before the password is checked).
DROP TABLE login_failures;

-- A customer's pending orders (the hoarding limits count them).
CREATE INDEX orders_user_pending_idx ON orders (user_id) WHERE status = 'pending';

-- Card testing: declined payments per order and per customer.
CREATE INDEX payments_failed_order_idx ON payments (order_id) WHERE status = 'failed';
CREATE INDEX payments_unsettled_or_failed_user_idx ON payments (user_id, created_at) WHERE status <> 'succeeded';
