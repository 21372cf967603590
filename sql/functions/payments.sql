-- Payments: step 1 (begin_payment) and step 3 (settle_payment) of a charge, each one
-- call and one round trip, with the lock order of every change (the customer's row,
-- then the order's row). Step 2, the provider's call, holds no connection.

-- Step 1: under the customer's lock, the decline limits (card testing), per customer
-- and, under a lock of the client address (transaction-scoped, after the customer's),
-- per address; then the order's lock, its checks (and the amount's), and the pending
-- payment with its provider-side idempotency key, the worker that will call the
-- provider and the client address. A request with an Idempotency-Key calls it through
-- begin_payment_once, between the key's claim and the claim's end, in one statement.
--
-- Each statement of a PL/pgSQL function takes a fresh snapshot (READ COMMITTED), so
-- the count of declines, made after the customer's lock is granted, sees what the
-- previous holder of that lock committed: concurrent payments of one customer count
-- each other.
--
-- Refusals, nothing written: 'too_many_order_declines' (declines),
-- 'too_many_declines' and 'too_many_declines_at_address' (retry_after: seconds until
-- the oldest counted payment is 24 hours old), 'order_not_found', 'wrong_status' (status), 'order_expired',
-- 'amount_mismatch' (total). A second pending payment for the order fails on the
-- partial unique index (unique_violation), whichever process tries.
CREATE OR REPLACE FUNCTION begin_payment(
    p_order_id bigint,
    p_user_id bigint,
    p_amount bigint,
    p_provider text,
    p_provider_key text,
    p_lease_seconds double precision,
    p_worker bigint,
    p_max_declines_per_order integer,
    p_max_declines_per_user integer,
    p_client_ip text,
    p_max_declines_per_ip integer,
    p_payment_method text
) RETURNS TABLE (payment payments, refusal jsonb)
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
    SELECT (SELECT count(*) FROM payments d
             WHERE d.order_id = p_order_id AND d.status = 'failed'
               AND d.failure_reason NOT IN ('not_charged', 'order_not_payable')) AS order_declines,
           count(*) AS user_declines,
           ceil(extract(epoch FROM min(p.created_at) + interval '24 hours' - now()))::bigint AS oldest_expires_in
      INTO v_declines
      FROM payments p
     WHERE p.user_id = p_user_id AND p.created_at > now() - interval '24 hours'
       AND (p.status = 'pending'
            OR (p.status = 'failed' AND p.failure_reason NOT IN ('not_charged', 'order_not_payable')));
    IF v_declines.order_declines >= p_max_declines_per_order THEN
        RETURN QUERY SELECT NULL::payments,
                            jsonb_build_object('code', 'too_many_order_declines', 'declines', v_declines.order_declines);
        RETURN;
    END IF;
    IF v_declines.user_declines >= p_max_declines_per_user THEN
        RETURN QUERY SELECT NULL::payments, jsonb_build_object(
            'code', 'too_many_declines', 'retry_after', greatest(1, v_declines.oldest_expires_in));
        RETURN;
    END IF;
    IF p_max_declines_per_ip > 0 AND p_client_ip IS NOT NULL THEN
        -- Fresh accounts of one address decide one after the other.
        PERFORM pg_advisory_xact_lock(x'4950'::integer, hashtext(p_client_ip));
        SELECT count(*) AS declines,
               ceil(extract(epoch FROM min(p.created_at) + interval '24 hours' - now()))::bigint AS oldest_expires_in
          INTO v_declines
          FROM payments p
         WHERE p.client_ip = p_client_ip AND p.created_at > now() - interval '24 hours'
           AND (p.status = 'pending'
                OR (p.status = 'failed' AND p.failure_reason NOT IN ('not_charged', 'order_not_payable')));
        IF v_declines.declines >= p_max_declines_per_ip THEN
            RETURN QUERY SELECT NULL::payments, jsonb_build_object(
                'code', 'too_many_declines_at_address', 'retry_after', greatest(1, v_declines.oldest_expires_in));
            RETURN;
        END IF;
    END IF;

    WITH o AS (
        SELECT o.id, o.status, o.total, o.currency, o.expires_at > now() AS open
          FROM orders o
         WHERE o.id = p_order_id AND o.user_id = p_user_id AND o.deleted_at IS NULL
           FOR UPDATE
    )
    INSERT INTO payments (order_id, user_id, amount, currency, provider, provider_key, lease_until, worker, client_ip,
                          payment_method)
    SELECT o.id, p_user_id, o.total, o.currency, p_provider, p_provider_key,
           now() + make_interval(secs => p_lease_seconds), p_worker, p_client_ip, p_payment_method
      FROM o
     WHERE o.status = 'pending' AND o.open AND (p_amount IS NULL OR o.total = p_amount)
    RETURNING * INTO v_payment;
    IF FOUND THEN
        RETURN QUERY SELECT v_payment, NULL::jsonb;
        RETURN;
    END IF;

    -- Why not (the order's row is locked by now, if it is the customer's).
    SELECT o.status, o.total, o.expires_at > now() AS open INTO v_order
      FROM orders o WHERE o.id = p_order_id AND o.user_id = p_user_id AND o.deleted_at IS NULL;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::payments, jsonb_build_object('code', 'order_not_found');
    ELSIF v_order.status <> 'pending' THEN
        RETURN QUERY SELECT NULL::payments, jsonb_build_object('code', 'wrong_status', 'status', v_order.status);
    ELSIF v_order.open IS NOT TRUE THEN
        RETURN QUERY SELECT NULL::payments, jsonb_build_object('code', 'order_expired');
    ELSE
        RETURN QUERY SELECT NULL::payments, jsonb_build_object('code', 'amount_mismatch', 'total', v_order.total);
    END IF;
END
$$;

-- Step 1 for a request with an Idempotency-Key, in one call: the key claimed (key_taken
-- when it was already: the caller replays what it names), begin_payment, and the
-- claim ended with what that started (a refusal keeps no record). A second pending
-- payment fails on its index as in begin_payment, and the claim rolls back with it.
CREATE OR REPLACE FUNCTION begin_payment_once(
    p_key text,
    p_request_hash bytea,
    p_order_id bigint,
    p_user_id bigint,
    p_amount bigint,
    p_provider text,
    p_provider_key text,
    p_lease_seconds double precision,
    p_worker bigint,
    p_max_declines_per_order integer,
    p_max_declines_per_user integer,
    p_client_ip text,
    p_max_declines_per_ip integer,
    p_payment_method text
) RETURNS TABLE (payment payments, refusal jsonb, key_taken boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_begun record;
BEGIN
    IF NOT claim_idempotency_key(p_user_id, p_key, p_request_hash) THEN
        RETURN QUERY SELECT NULL::payments, NULL::jsonb, true;
        RETURN;
    END IF;
    SELECT r.payment, r.refusal INTO v_begun
      FROM begin_payment(p_order_id, p_user_id, p_amount, p_provider, p_provider_key, p_lease_seconds, p_worker,
                         p_max_declines_per_order, p_max_declines_per_user, p_client_ip, p_max_declines_per_ip,
                         p_payment_method) r;
    PERFORM end_idempotency_claim(p_user_id, p_key, (v_begun.payment).id, NULL);
    RETURN QUERY SELECT v_begun.payment, v_begun.refusal, false;
END
$$;

-- Step 3: record the provider's answer for a payment in flight (p_status 'succeeded',
-- 'failed' or 'requires_action') and, on success, mark its order paid; then its events:
-- payment.<status> and, when the order was paid, order.paid, in that order (ids follow
-- it, and webhook queues deliver one resource's events in id order).
--
-- A `pending` payment may become anything; one that `requires_action` (it waits for its
-- customer, with p_client_secret and p_next_action to finish it; no event, the order
-- stays pending and no longer waits for it) only succeeded or failed, later. The
-- payment's lock is re-checked once granted (a reconciler or a provider event may have
-- settled it meanwhile: then no row, nothing written); the order is paid only if it is
-- still pending and not deleted. A charge that succeeded for an order that can no
-- longer be paid is recorded as failed with `order_not_payable`, and refund_due tells
-- the caller to give the money back (its event is then payment.failed).
CREATE OR REPLACE FUNCTION settle_payment(
    p_payment_id bigint,
    p_status text,
    p_provider_ref text,
    p_failure_reason text,
    p_client_secret text DEFAULT NULL,
    p_next_action jsonb DEFAULT NULL
) RETURNS TABLE (payment payments, refund_due boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_settled record;
BEGIN
    WITH pay AS (
        SELECT p.id, p.order_id FROM payments p
         WHERE p.id = p_payment_id
           AND (p.status = 'pending' OR (p.status = 'requires_action' AND p_status <> 'requires_action'))
           FOR UPDATE
    ), paid AS (
        UPDATE orders o SET status = 'paid', expires_at = NULL, updated_at = now()
          FROM pay
         WHERE p_status = 'succeeded' AND o.id = pay.order_id AND o.status = 'pending' AND o.deleted_at IS NULL
        RETURNING o AS paid_order
    ), outcome AS (
        SELECT CASE WHEN p_status = 'succeeded' AND NOT EXISTS (SELECT 1 FROM paid)
                    THEN 'order_not_payable' END AS unpayable
    )
    UPDATE payments p SET
        status = CASE WHEN outcome.unpayable IS NULL THEN p_status ELSE 'failed' END,
        failure_reason = coalesce(outcome.unpayable, p_failure_reason),
        provider_ref = coalesce(p_provider_ref, p.provider_ref),
        client_secret = CASE WHEN p_status = 'requires_action' THEN p_client_secret END,
        next_action = CASE WHEN p_status = 'requires_action' THEN p_next_action END,
        lease_until = NULL,
        worker = NULL,
        updated_at = now()
      FROM pay, outcome
     WHERE p.id = pay.id
    RETURNING p AS payment, outcome.unpayable IS NOT NULL AS refund_due, (SELECT paid_order FROM paid) AS paid_order
    INTO v_settled;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    IF (v_settled.payment).status <> 'requires_action' THEN
        PERFORM emit_event('payment.' || (v_settled.payment).status, to_jsonb(v_settled.payment));
    END IF;
    IF (v_settled.paid_order).id IS NOT NULL THEN
        PERFORM emit_event('order.paid', order_snapshot(v_settled.paid_order, order_items_of((v_settled.paid_order).id)));
        PERFORM release_holds(ARRAY[(v_settled.paid_order).id]);  -- paid: it no longer holds (the last locks)
    END IF;

    RETURN QUERY SELECT v_settled.payment, v_settled.refund_due;
END
$$;
