-- Step 1 of a payment in one statement (issue #16): the customer's lock, the decline
-- limits, the order's lock and the pending payment used to be a transaction of five
-- round trips from Python (BEGIN, lock, count, insert, COMMIT), each waking the
-- server and PostgreSQL in turn on a 2-core machine. Same steps, same lock order
-- (the customer's row, then the order's row: as sql/016_order_limits.sql), same
-- checks: a call without an Idempotency-Key is its own transaction, one round trip;
-- with a key it runs inside the transaction that claims the key.
--
-- Each statement of a PL/pgSQL function takes a fresh snapshot (READ COMMITTED), so
-- the count of declines, made after the customer's lock is granted, sees what the
-- previous holder of that lock committed: concurrent payments of one customer count
-- each other, as they did when the count was a statement of its own.
--
-- A refusal comes back by name, nothing written ('too_many_order_declines' with the
-- order's declines in `number`; 'too_many_declines' with the seconds until the oldest
-- counted payment is 24 hours old; 'not_found'; 'wrong_status' with `order_status`;
-- 'expired'; 'amount_mismatch' with the order's total). A second pending payment for
-- the order still fails on the partial unique index (unique_violation), whichever
-- process tries.
CREATE FUNCTION begin_payment(
    p_order_id bigint,
    p_user_id bigint,
    p_amount bigint,
    p_provider text,
    p_provider_key text,
    p_lease_seconds double precision,
    p_owner bigint,
    p_max_declines_per_order integer,
    p_max_declines_per_user integer
) RETURNS TABLE (payment payments, refusal text, order_status text, number bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_declines record;
    v_order record;
    v_payment payments;
BEGIN
    PERFORM 1 FROM users WHERE id = p_user_id FOR NO KEY UPDATE;

    -- Declines by the provider (not failures of ours: a charge never made, or one
    -- refunded because the order could not be paid). The customer's payments still
    -- in flight count as possible declines: they cannot all start at the limit's edge
    -- and all be declined.
    SELECT (SELECT count(*) FROM payments
             WHERE order_id = p_order_id AND status = 'failed'
               AND failure_reason NOT IN ('not_charged', 'order_not_payable')) AS order_declines,
           count(*) AS user_declines,
           ceil(extract(epoch FROM min(created_at) + interval '24 hours' - now()))::bigint AS oldest_expires_in
      INTO v_declines
      FROM payments
     WHERE user_id = p_user_id AND created_at > now() - interval '24 hours'
       AND (status = 'pending'
            OR (status = 'failed' AND failure_reason NOT IN ('not_charged', 'order_not_payable')));
    IF v_declines.order_declines >= p_max_declines_per_order THEN
        RETURN QUERY SELECT NULL::payments, 'too_many_order_declines', NULL::text, v_declines.order_declines;
        RETURN;
    END IF;
    IF v_declines.user_declines >= p_max_declines_per_user THEN
        RETURN QUERY SELECT NULL::payments, 'too_many_declines', NULL::text,
                            greatest(1, v_declines.oldest_expires_in);
        RETURN;
    END IF;

    WITH o AS (
        SELECT id, status, total, currency, expires_at > now() AS open
          FROM orders
         WHERE id = p_order_id AND user_id = p_user_id AND deleted_at IS NULL
           FOR UPDATE
    )
    INSERT INTO payments (order_id, user_id, amount, currency, provider, provider_key, lease_until, owner)
    SELECT o.id, p_user_id, o.total, o.currency, p_provider, p_provider_key,
           now() + make_interval(secs => p_lease_seconds), p_owner
      FROM o
     WHERE o.status = 'pending' AND o.open AND (p_amount IS NULL OR o.total = p_amount)
    RETURNING * INTO v_payment;
    IF FOUND THEN
        RETURN QUERY SELECT v_payment, NULL::text, NULL::text, NULL::bigint;
        RETURN;
    END IF;

    -- Why not (the order's row is locked by now, if it is the customer's).
    SELECT status, total, expires_at > now() AS open INTO v_order
      FROM orders WHERE id = p_order_id AND user_id = p_user_id AND deleted_at IS NULL;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::payments, 'not_found', NULL::text, NULL::bigint;
        RETURN;
    END IF;
    RETURN QUERY SELECT NULL::payments,
                        CASE WHEN v_order.status <> 'pending' THEN 'wrong_status'
                             WHEN v_order.open IS NOT TRUE THEN 'expired'
                             ELSE 'amount_mismatch' END,
                        v_order.status, v_order.total;
END
$$;
