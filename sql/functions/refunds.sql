-- Refunds, in the shape of payments: step 1 (begin_refund) and step 3 (settle_refund)
-- are one call each; step 2, the provider's call, holds no connection.
--
-- Lock order, as for charges: the payment row, then the refund, then the order, then
-- the products in id order. The ceiling is kept on the payment row: a refund reserves
-- its amount there (amount_refund_pending) under the row's lock, so refunds in any
-- number of processes never together pass it, and the row's CHECK is its last guard.

-- The rules of a refund, on the locked payment: NULL when `p_amount` (NULL: what is
-- left) may be refunded, else why not. What is left is the amount minus what succeeded
-- and what is in flight; `restock` goes only with the refund that completes the whole
-- amount. Refusals: 'payment_pending', 'payment_not_refundable' (status),
-- 'refund_in_flight' (left, in_flight), 'nothing_left', 'over_refund' (left),
-- 'restock_in_flight', 'restock_partial' (left).
CREATE OR REPLACE FUNCTION refund_refusal(p_payment payments, p_amount bigint, p_restock boolean) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_in_flight bigint := p_payment.amount_refund_pending;
    v_left bigint := p_payment.amount - p_payment.amount_refunded - p_payment.amount_refund_pending;
    v_amount bigint := coalesce(p_amount, p_payment.amount - p_payment.amount_refunded - p_payment.amount_refund_pending);
BEGIN
    IF p_payment.status = 'pending' THEN
        RETURN jsonb_build_object('code', 'payment_pending');
    END IF;
    IF p_payment.status <> 'succeeded' THEN
        RETURN jsonb_build_object('code', 'payment_not_refundable', 'status', p_payment.status);
    END IF;
    IF v_amount > v_left OR v_left = 0 THEN
        IF v_in_flight > 0 THEN
            -- What is in flight may fail and come back: a retry may succeed.
            RETURN jsonb_build_object('code', 'refund_in_flight', 'left', v_left, 'in_flight', v_in_flight);
        END IF;
        IF v_left = 0 THEN
            RETURN jsonb_build_object('code', 'nothing_left');
        END IF;
        RETURN jsonb_build_object('code', 'over_refund', 'left', v_left);
    END IF;
    IF p_restock AND v_in_flight > 0 THEN
        RETURN jsonb_build_object('code', 'restock_in_flight');
    END IF;
    IF p_restock AND v_amount < v_left THEN
        RETURN jsonb_build_object('code', 'restock_partial', 'left', v_left);
    END IF;
    RETURN NULL;
END
$$;

-- Step 1: lock the payment, apply the rules, reserve the amount on the payment and
-- record the pending refund with its provider-side idempotency key and the worker
-- that will call the provider. Refusals, nothing written: 'payment_not_found' and
-- refund_refusal's.
CREATE OR REPLACE FUNCTION begin_refund(
    p_payment_id bigint,
    p_requested_by bigint,
    p_amount bigint,
    p_reason text,
    p_restock boolean,
    p_provider_key text,
    p_worker bigint,
    p_lease_seconds double precision
) RETURNS TABLE (refund refunds, refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_payment payments;
    v_refusal jsonb;
    v_amount bigint;
    v_refund refunds;
BEGIN
    SELECT * INTO v_payment FROM payments p WHERE p.id = p_payment_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::refunds, jsonb_build_object('code', 'payment_not_found');
        RETURN;
    END IF;
    v_refusal := refund_refusal(v_payment, p_amount, p_restock);
    IF v_refusal IS NOT NULL THEN
        RETURN QUERY SELECT NULL::refunds, v_refusal;
        RETURN;
    END IF;
    v_amount := coalesce(p_amount, v_payment.amount - v_payment.amount_refunded - v_payment.amount_refund_pending);

    UPDATE payments p SET amount_refund_pending = p.amount_refund_pending + v_amount, updated_at = now()
     WHERE p.id = p_payment_id;
    INSERT INTO refunds
        (payment_id, order_id, requested_by, amount, currency, reason, restock, provider_key, worker, lease_until)
    VALUES (v_payment.id, v_payment.order_id, p_requested_by, v_amount, v_payment.currency, p_reason, p_restock,
            p_provider_key, p_worker, now() + make_interval(secs => p_lease_seconds))
    RETURNING * INTO v_refund;
    RETURN QUERY SELECT v_refund, NULL::jsonb;
END
$$;

-- begin_refund for a request with an Idempotency-Key, in one call, as begin_payment_once
-- does it for a payment.
CREATE OR REPLACE FUNCTION begin_refund_once(
    p_key text,
    p_request_hash bytea,
    p_payment_id bigint,
    p_requested_by bigint,
    p_amount bigint,
    p_reason text,
    p_restock boolean,
    p_provider_key text,
    p_worker bigint,
    p_lease_seconds double precision
) RETURNS TABLE (refund refunds, refusal jsonb, key_taken boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_begun record;
BEGIN
    IF NOT claim_idempotency_key(p_requested_by, p_key, p_request_hash) THEN
        RETURN QUERY SELECT NULL::refunds, NULL::jsonb, true;
        RETURN;
    END IF;
    SELECT r.refund, r.refusal INTO v_begun
      FROM begin_refund(p_payment_id, p_requested_by, p_amount, p_reason, p_restock, p_provider_key, p_worker,
                        p_lease_seconds) r;
    PERFORM end_idempotency_claim(p_requested_by, p_key, NULL, (v_begun.refund).id);
    RETURN QUERY SELECT v_begun.refund, v_begun.refusal, false;
END
$$;

-- Step 3: record the provider's answer for a pending refund ('succeeded' or 'failed'):
-- the reservation moves to amount_refunded (or goes back), the order follows its
-- payment (amount_refunded, and `refunded` from one of p_refundable once the whole
-- amount is back, restocking if the refund asked), and the events: refund.<status>,
-- then order.refunded when the order became refunded. No row when the refund was no
-- longer pending (someone settled it first: nothing written).
CREATE OR REPLACE FUNCTION settle_refund(
    p_refund_id bigint,
    p_status text,
    p_provider_ref text,
    p_failure_reason text,
    p_refundable text[]
) RETURNS TABLE (refund refunds, previous_status text, became_refunded boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_refund refunds;
    v_payment record;
    v_previous text;
    v_order orders;
BEGIN
    PERFORM 1 FROM payments p JOIN refunds r ON r.payment_id = p.id WHERE r.id = p_refund_id FOR UPDATE OF p;
    UPDATE refunds r SET status = p_status, provider_ref = p_provider_ref, failure_reason = p_failure_reason,
                         worker = NULL, lease_until = NULL, updated_at = now()
     WHERE r.id = p_refund_id AND r.status = 'pending'
    RETURNING r.* INTO v_refund;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    UPDATE payments p
       SET amount_refund_pending = p.amount_refund_pending - v_refund.amount,
           amount_refunded = p.amount_refunded + CASE WHEN p_status = 'succeeded' THEN v_refund.amount ELSE 0 END,
           updated_at = now()
     WHERE p.id = v_refund.payment_id
    RETURNING p.amount, p.amount_refunded INTO v_payment;
    PERFORM emit_event('refund.' || p_status, to_jsonb(v_refund));
    IF p_status <> 'succeeded' THEN
        RETURN QUERY SELECT v_refund, NULL::text, false;
        RETURN;
    END IF;

    SELECT o.status INTO v_previous FROM orders o WHERE o.id = v_refund.order_id FOR UPDATE;
    UPDATE orders o
       SET amount_refunded = v_payment.amount_refunded,
           status = CASE WHEN v_payment.amount_refunded = v_payment.amount AND v_previous = ANY (p_refundable)
                         THEN 'refunded' ELSE o.status END,
           updated_at = now()
     WHERE o.id = v_refund.order_id
    RETURNING o.* INTO v_order;
    -- Units go back once per payment: a restocking refund that later failed at the
    -- provider left them in stock.
    IF v_payment.amount_refunded = v_payment.amount AND v_refund.restock
       AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.payment_id = v_refund.payment_id AND r.restocked) THEN
        PERFORM return_stock(ARRAY[v_refund.order_id]);
        UPDATE refunds r SET restocked = true WHERE r.id = v_refund.id;
    END IF;
    IF v_order.status = 'refunded' AND v_previous <> 'refunded' THEN
        UPDATE refunds r SET order_status_before = v_previous WHERE r.id = v_refund.id;
        PERFORM emit_event('order.refunded', order_snapshot(v_order, order_items_of(v_order.id)));
        RETURN QUERY SELECT v_refund, v_previous, true;
        RETURN;
    END IF;
    RETURN QUERY SELECT v_refund, v_previous, false;
END
$$;

-- A refund that had succeeded and that the provider reports failed afterwards
-- (asynchronous failure): its effect is undone. The refund becomes failed (with the
-- provider's reason), the payment's and the order's amount_refunded go back down, an
-- order that had become `refunded` returns to the status it had before (kept by the
-- refund that completed the amount), and refund.failed is emitted. Units a restock
-- returned stay in stock. No row when the refund was not `succeeded` (never succeeded,
-- or already undone: nothing written). Lock order as in settle_refund.
CREATE OR REPLACE FUNCTION fail_refund(p_refund_id bigint, p_failure_reason text)
RETURNS TABLE (refund refunds, previous_status text, restored_status text)
LANGUAGE plpgsql AS $$
DECLARE
    v_refund refunds;
    v_refunded bigint;
    v_previous text;
    v_before text;
BEGIN
    PERFORM 1 FROM payments p JOIN refunds r ON r.payment_id = p.id WHERE r.id = p_refund_id FOR UPDATE OF p;
    UPDATE refunds r SET status = 'failed', failure_reason = p_failure_reason, updated_at = now()
     WHERE r.id = p_refund_id AND r.status = 'succeeded'
    RETURNING r.* INTO v_refund;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE payments p SET amount_refunded = p.amount_refunded - v_refund.amount, updated_at = now()
     WHERE p.id = v_refund.payment_id
    RETURNING p.amount_refunded INTO v_refunded;

    SELECT o.status INTO v_previous FROM orders o WHERE o.id = v_refund.order_id FOR UPDATE;
    IF v_previous = 'refunded' THEN
        SELECT r.order_status_before INTO v_before FROM refunds r
         WHERE r.payment_id = v_refund.payment_id AND r.order_status_before IS NOT NULL
         ORDER BY r.id DESC LIMIT 1;
    END IF;
    UPDATE orders o SET amount_refunded = v_refunded, status = coalesce(v_before, o.status), updated_at = now()
     WHERE o.id = v_refund.order_id;
    PERFORM emit_event('refund.failed', to_jsonb(v_refund));
    RETURN QUERY SELECT v_refund, v_previous, v_before;
END
$$;
