-- Creating an order writes its order.created event itself (issue #16): the outbox row
-- (sql/009_events.sql) used to be a second statement from Python inside an explicit
-- transaction (BEGIN, the create call, INSERT INTO events, COMMIT: four round trips).
-- Written by create_order, in the statement that places the order, it commits or rolls
-- back with the order, exists exactly when an order was placed (a refusal returns before
-- it), and POST /api/orders is one statement: one round trip, its own transaction.

-- A timestamp as the API writes it (orjson with OPT_UTC_Z, server/runtime/jsonio.py):
-- RFC 3339 in UTC with a `Z`, six fraction digits, none when the microseconds are zero.
-- Not to_jsonb(timestamptz): that writes the session's TimeZone offset (the pool sets
-- none, so the server's or database's default) and trims trailing zeros.
CREATE FUNCTION api_timestamp(p_at timestamptz) RETURNS text
LANGUAGE sql STABLE STRICT AS $$
    SELECT to_char(t.utc, 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN t.utc = date_trunc('second', t.utc) THEN '' ELSE to_char(t.utc, '.US') END
           || 'Z'
      FROM (SELECT p_at AT TIME ZONE 'UTC') AS t (utc)
$$;

-- An order as the API shows it: server/domain/orders.py's order_json, by column name
-- (keep the two in step; tests/test_events.py compares them). The lines go whole, as
-- order_line records by field name, like Python's `dict(line.items())`.
CREATE FUNCTION order_json(p_order orders, p_lines order_line[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', p_order.id,
        'user_id', p_order.user_id,
        'status', p_order.status,
        'items', to_jsonb(p_lines),
        'total', p_order.total,
        'amount_refunded', p_order.amount_refunded,
        'currency', p_order.currency,
        'created_at', api_timestamp(p_order.created_at),
        'updated_at', api_timestamp(p_order.updated_at),
        'expires_at', api_timestamp(p_order.expires_at)
    )
$$;

-- 015's create_order, unchanged but for the event after the order and its lines.
CREATE OR REPLACE FUNCTION create_order(
    p_user_id bigint,
    p_product_ids bigint[],
    p_quantities integer[],
    p_ttl_seconds double precision
) RETURNS TABLE (placed orders, lines order_line[], refusal order_lines_refusal)
LANGUAGE plpgsql AS $$
DECLARE
    v_priced record;
    v_order orders;
BEGIN
    SELECT * INTO v_priced FROM price_order_lines(p_product_ids, p_quantities, '{}', '{}');
    IF (v_priced.refusal).reason IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_line[], v_priced.refusal;
        RETURN;
    END IF;

    -- (The id = ANY condition lets the plan find the rows by primary key.)
    UPDATE products pr SET stock = pr.stock - w.quantity, updated_at = now()
      FROM unnest(p_product_ids, p_quantities) AS w (product_id, quantity)
     WHERE pr.id = ANY (p_product_ids) AND pr.id = w.product_id;

    INSERT INTO orders (user_id, total, currency, expires_at)
    VALUES (p_user_id, v_priced.total, v_priced.currency, now() + make_interval(secs => p_ttl_seconds))
    RETURNING * INTO v_order;

    INSERT INTO order_items (order_id, line_no, product_id, name, unit_price, quantity, line_total)
    SELECT v_order.id, l.line_no, l.product_id, l.name, l.unit_price, l.quantity, l.line_total
      FROM unnest(v_priced.lines) WITH ORDINALITY AS l (product_id, name, unit_price, quantity, line_total, line_no);

    -- The order as this call returns it, so as POST /api/orders answers it.
    INSERT INTO events (type, data) VALUES ('order.created', order_json(v_order, v_priced.lines));

    RETURN QUERY SELECT v_order, v_priced.lines, NULL::order_lines_refusal;
END
$$;
