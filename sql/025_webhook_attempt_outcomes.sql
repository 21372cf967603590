-- The delivery log shows each attempt's own outcome (the contract's clarification of
-- 2026-12-05): an attempt that failed is 'failed', also when a retry followed. Until
-- now such an attempt was logged 'pending' (the delivery's status after it) and kept
-- so after the delivery succeeded. Entries are written once an attempt is made, so
-- none of them is in flight: every 'pending' one failed.
UPDATE webhook_attempts SET status = 'failed' WHERE status = 'pending';
