-- create_order (006) with the stock update reaching the products by primary key:
-- the id = ANY condition lets the plan use the products' primary key index instead
-- of joining the whole table to the lines. A migration of its own, since applied
-- migrations are never re-run.
CREATE OR REPLACE FUNCTION create_order(
    p_user_id bigint,
    p_product_ids bigint[],
    p_quantities integer[],
    p_ttl_seconds double precision
) RETURNS TABLE (placed orders, checked order_line_check[])
LANGUAGE plpgsql AS $$
DECLARE
    v_checked order_line_check[];
    v_ok boolean;
    v_currency text;
    v_total bigint;
    v_order orders;
BEGIN
    SELECT array_agg(ROW(w.product_id, p.name, p.price, w.quantity, p.stock, p.currency)::order_line_check
                     ORDER BY w.line_no),
           count(*) = cardinality(p_product_ids) AND bool_and(p.stock >= w.quantity)
               AND count(DISTINCT p.currency) = 1,
           min(p.currency),
           sum(p.price * w.quantity)::bigint
      INTO v_checked, v_ok, v_currency, v_total
      FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS w (product_id, quantity, line_no)
      JOIN (SELECT pr.id, pr.name, pr.price, pr.stock, pr.currency
              FROM products pr
             WHERE pr.id = ANY (p_product_ids) AND pr.deleted_at IS NULL
             ORDER BY pr.id
               FOR UPDATE) p ON p.id = w.product_id;

    IF NOT coalesce(v_ok, false) THEN
        RETURN QUERY SELECT NULL::orders, coalesce(v_checked, '{}');
        RETURN;
    END IF;

    -- (The id = ANY condition lets the plan find the rows by primary key.)
    UPDATE products pr SET stock = pr.stock - w.quantity, updated_at = now()
      FROM unnest(p_product_ids, p_quantities) AS w (product_id, quantity)
     WHERE pr.id = ANY (p_product_ids) AND pr.id = w.product_id;

    INSERT INTO orders (user_id, total, currency, expires_at)
    VALUES (p_user_id, v_total, v_currency, now() + make_interval(secs => p_ttl_seconds))
    RETURNING * INTO v_order;

    INSERT INTO order_items (order_id, line_no, product_id, name, unit_price, quantity, line_total)
    SELECT v_order.id, c.line_no, c.product_id, c.name, c.price, c.quantity, c.price * c.quantity
      FROM unnest(v_checked) WITH ORDINALITY AS c (product_id, name, price, quantity, stock, currency, line_no);

    RETURN QUERY SELECT v_order, v_checked;
END
$$;
