-- The types of the order-line rules (sql/functions/orders.sql): a line as the API
-- shows it, and why lines were refused.

-- A line as the API shows it; asyncpg returns it with its field names.
CREATE TYPE order_line AS (
    product_id  bigint,
    name        text,
    unit_price  bigint,
    quantity    integer,
    line_total  bigint
);

-- Why lines were refused: 'unknown_products' (product_ids: every unknown or deleted
-- one, in request order), 'mixed_currencies', or 'short_stock' (product_ids: the
-- first line that cannot be covered; product_name and available for the message).
CREATE TYPE order_lines_refusal AS (
    reason        text,
    product_ids   bigint[],
    product_name  text,
    available     integer
);
