-- Step 3 of a payment in one statement (issue #16): recording the provider's answer
-- used to be a transaction of four round trips from Python (BEGIN, the settling
-- statement, one INSERT of the events, COMMIT). settle_payment settles the payment as
-- that statement did and writes the events itself, so the events still commit, or
-- roll back, with the change they report, and step 3 is one round trip, its own
-- transaction. Like sql/017, it builds the API's JSON in SQL.

-- A payment as the API shows it: server/domain/payments/service.py's payment_json, by
-- column name (keep the two in step; tests/test_events.py compares them).
CREATE FUNCTION payment_json(p_payment payments) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p_payment.id,
        'order_id', p_payment.order_id,
        'amount', p_payment.amount,
        'amount_refunded', p_payment.amount_refunded,
        'currency', p_payment.currency,
        'status', p_payment.status,
        'failure_reason', p_payment.failure_reason,
        'provider', p_payment.provider,
        'provider_ref', p_payment.provider_ref,
        'created_at', api_timestamp(p_payment.created_at)
    )
$$;

-- Record the provider's answer for a pending payment (p_status 'succeeded' or
-- 'failed') and, on success, mark its order paid; then write payment.<status> and,
-- when the order was paid, order.paid (the order as this call paid it), in that
-- order: ids follow it, and webhook queues deliver one resource's events in id order.
--
-- The settling statement is the one step 3 ran from Python before (db/payments.py):
-- the payment's lock, re-checked as still pending once granted (a reconciler may
-- have settled it meanwhile: then no row, nothing written); the order paid only if
-- it is still pending and not deleted. A charge that succeeded for an order that can
-- no longer be paid is recorded as failed with `order_not_payable`, and refund_due
-- tells the caller to give the money back (its event is then payment.failed).
CREATE FUNCTION settle_payment(
    p_payment_id bigint,
    p_status text,
    p_provider_ref text,
    p_failure_reason text
) RETURNS TABLE (payment payments, refund_due boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_settled record;
BEGIN
    WITH pay AS (
        SELECT id, order_id FROM payments WHERE id = p_payment_id AND status = 'pending' FOR UPDATE
    ), paid AS (
        UPDATE orders o SET status = 'paid', expires_at = NULL, updated_at = now()
          FROM pay
         WHERE p_status = 'succeeded' AND o.id = pay.order_id AND o.status = 'pending' AND o.deleted_at IS NULL
        RETURNING o AS paid_order,
                  ARRAY(SELECT ROW(i.product_id, i.name, i.unit_price, i.quantity, i.line_total)::order_line
                          FROM order_items i WHERE i.order_id = o.id ORDER BY i.line_no) AS items
    ), outcome AS (
        SELECT CASE WHEN p_status = 'succeeded' AND NOT EXISTS (SELECT 1 FROM paid)
                    THEN 'order_not_payable' END AS unpayable
    )
    UPDATE payments p SET
        status = CASE WHEN outcome.unpayable IS NULL THEN p_status ELSE 'failed' END,
        failure_reason = coalesce(outcome.unpayable, p_failure_reason),
        provider_ref = p_provider_ref,
        lease_until = NULL,
        owner = NULL,
        updated_at = now()
      FROM pay, outcome
     WHERE p.id = pay.id
    RETURNING p AS payment, outcome.unpayable IS NOT NULL AS refund_due,
              (SELECT paid_order FROM paid) AS paid_order, (SELECT items FROM paid) AS paid_items
    INTO v_settled;
    IF NOT FOUND THEN
        RETURN;
    END IF;

    -- Two statements, so the second event's id is above the first's.
    INSERT INTO events (type, data)
    VALUES ('payment.' || (v_settled.payment).status, payment_json(v_settled.payment));
    IF (v_settled.paid_order).id IS NOT NULL THEN
        INSERT INTO events (type, data)
        VALUES ('order.paid', order_json(v_settled.paid_order, v_settled.paid_items));
    END IF;

    RETURN QUERY SELECT v_settled.payment, v_settled.refund_due;
END
$$;
