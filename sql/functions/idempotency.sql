-- Idempotency-Key records (the table: sql/004_payments.sql): a key is claimed in the
-- transaction that starts the work it names, and that transaction ends the claim, so
-- the claim and the work commit, or roll back, together. The wrappers that start a
-- payment or a refund with a key (begin_payment_once, begin_refund_once) call these
-- two around their step 1: one statement where a claim, the step and the record of its
-- outcome were a transaction of five round trips.

-- Take the key for a new request; false when it is taken already (a concurrent claim
-- of the same key waits here until the first one's transaction is over, then sees it).
CREATE OR REPLACE FUNCTION claim_idempotency_key(p_user_id bigint, p_key text, p_request_hash bytea)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES (p_user_id, p_key, p_request_hash)
    ON CONFLICT (user_id, key) DO NOTHING;
    RETURN FOUND;
END
$$;

-- What the claimed key's request started: the payment or the refund it names; with
-- neither (the request was refused) no record is kept, so a repeat is judged afresh.
CREATE OR REPLACE FUNCTION end_idempotency_claim(
    p_user_id bigint, p_key text, p_payment_id bigint, p_refund_id bigint
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_payment_id IS NULL AND p_refund_id IS NULL THEN
        DELETE FROM idempotency_keys WHERE user_id = p_user_id AND key = p_key;
    ELSE
        UPDATE idempotency_keys SET payment_id = p_payment_id, refund_id = p_refund_id
         WHERE user_id = p_user_id AND key = p_key;
    END IF;
END
$$;
