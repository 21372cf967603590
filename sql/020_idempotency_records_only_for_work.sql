-- Idempotency-Key records are kept only for requests that were carried out: a payment
-- or a refund was started (it may have succeeded, failed with a 402, or still be in
-- flight). A refusal (404, 409, 422, 429) starts nothing and stores nothing, so a
-- stream of refused requests with fresh keys costs no storage, and a key refused once
-- can be used again when the refusal no longer holds.
DELETE FROM idempotency_keys WHERE payment_id IS NULL AND refund_id IS NULL;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_one_outcome;
ALTER TABLE idempotency_keys DROP COLUMN response_status, DROP COLUMN response_body;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_one_outcome CHECK (num_nonnulls(payment_id, refund_id) <= 1);
