-- One word per concept. An order's lines are its `items` everywhere, as in the API and
-- the order_items table: the type of an item as the API shows it is `order_item`. The
-- process that holds a payment or refund in flight is its `worker` (the liveness lock
-- of a worker process, server/runtime/liveness.py); "owner" is the order's customer.
ALTER TYPE order_line RENAME TO order_item;
-- Refusals come back as jsonb documents now (a code and what it is about): the
-- functions that returned this type are replaced by the files of sql/functions.
DROP TYPE order_lines_refusal CASCADE;
ALTER TABLE payments RENAME COLUMN owner TO worker;
ALTER TABLE refunds RENAME COLUMN owner TO worker;
