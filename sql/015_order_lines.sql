-- The order-line rules in one place. `price_order_lines` is the one authority on
-- whether a set of lines can be ordered: every product known and live, one
-- currency, enough stock (counting what the order already holds). Creating an order
-- and replacing its lines both ask it, and a refusal comes back by name, so the
-- application only maps a named reason to its error. (Merging repeated products and
-- the per-product quantity limit happen before, in the domain: these functions take
-- each product once.)

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

CREATE FUNCTION price_order_lines(
    p_product_ids bigint[],
    p_quantities integer[],
    p_held_ids bigint[],
    p_held_quantities integer[],
    OUT lines order_line[],
    OUT currency text,
    OUT total bigint,
    OUT refusal order_lines_refusal
)
LANGUAGE plpgsql AS $$
DECLARE
    v_unknown bigint[];
    v_currencies bigint;
    v_short_id bigint;
    v_short_name text;
    v_short_available integer;
BEGIN
    -- Every product named or held is locked in ascending id order (the global lock
    -- order). The main query below locks the named ones as it reads them; a product
    -- held but no longer named (a replacement dropped it) is locked here first, with
    -- the rest, so that the order still holds.
    IF NOT p_held_ids <@ p_product_ids THEN
        PERFORM 1 FROM products WHERE id = ANY (p_product_ids || p_held_ids) ORDER BY id FOR UPDATE;
    END IF;

    SELECT array_agg(w.product_id ORDER BY w.line_no) FILTER (WHERE p.id IS NULL),
           count(DISTINCT p.currency),
           min(p.currency),
           (array_agg(w.product_id ORDER BY w.line_no) FILTER (WHERE p.stock + coalesce(h.quantity, 0) < w.quantity))[1],
           (array_agg(p.name ORDER BY w.line_no) FILTER (WHERE p.stock + coalesce(h.quantity, 0) < w.quantity))[1],
           (array_agg(p.stock + coalesce(h.quantity, 0) ORDER BY w.line_no)
                FILTER (WHERE p.stock + coalesce(h.quantity, 0) < w.quantity))[1],
           array_agg(ROW(w.product_id, p.name, p.price, w.quantity, p.price * w.quantity)::order_line ORDER BY w.line_no),
           sum(p.price * w.quantity)::bigint
      INTO v_unknown, v_currencies, currency, v_short_id, v_short_name, v_short_available, lines, total
      FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS w (product_id, quantity, line_no)
      LEFT JOIN (SELECT pr.id, pr.name, pr.price, pr.stock, pr.currency
                   FROM products pr
                  WHERE pr.id = ANY (p_product_ids) AND pr.deleted_at IS NULL
                  ORDER BY pr.id
                    FOR UPDATE) p ON p.id = w.product_id
      LEFT JOIN unnest(p_held_ids, p_held_quantities) AS h (product_id, quantity) ON h.product_id = w.product_id;

    IF v_unknown IS NOT NULL OR v_currencies = 0 THEN
        refusal := ROW('unknown_products', coalesce(v_unknown, '{}'), NULL, NULL);
    ELSIF v_currencies > 1 THEN
        refusal := ROW('mixed_currencies', NULL, NULL, NULL);
    ELSIF v_short_id IS NOT NULL THEN
        refusal := ROW('short_stock', ARRAY[v_short_id], v_short_name, v_short_available);
    END IF;
    -- (A row IS NOT NULL only when every field is: test the reason.)
    IF (refusal).reason IS NOT NULL THEN
        lines := NULL;
    END IF;
END
$$;

-- Creating an order in one call (one round trip): price the lines (which locks the
-- products), and only when nothing is refused reserve the stock, write the order and
-- its lines. Replaces 006/008's create_order, whose refusals came back as rows to be
-- decoded by position.
DROP FUNCTION create_order(bigint, bigint[], integer[], double precision);
DROP TYPE order_line_check;

CREATE FUNCTION create_order(
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

    RETURN QUERY SELECT v_order, v_priced.lines, NULL::order_lines_refusal;
END
$$;

-- Replacing a pending order's lines, re-reserving atomically: what the order held
-- counts as available to it. The caller has locked the order row and checked its
-- status; on a refusal nothing changes.
CREATE FUNCTION replace_order_lines(
    p_order_id bigint,
    p_product_ids bigint[],
    p_quantities integer[]
) RETURNS TABLE (placed orders, lines order_line[], refusal order_lines_refusal)
LANGUAGE plpgsql AS $$
DECLARE
    v_held_ids bigint[];
    v_held_quantities integer[];
    v_priced record;
    v_order orders;
BEGIN
    SELECT coalesce(array_agg(i.product_id), '{}'), coalesce(array_agg(i.quantity), '{}')
      INTO v_held_ids, v_held_quantities
      FROM order_items i WHERE i.order_id = p_order_id;

    SELECT * INTO v_priced FROM price_order_lines(p_product_ids, p_quantities, v_held_ids, v_held_quantities);
    IF (v_priced.refusal).reason IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_line[], v_priced.refusal;
        RETURN;
    END IF;

    -- Each product's stock moves by what the order held minus what it now wants.
    UPDATE products pr SET stock = pr.stock + d.delta, updated_at = now()
      FROM (
          SELECT product_id, sum(quantity)::integer AS delta
            FROM (SELECT * FROM unnest(v_held_ids, v_held_quantities)
                  UNION ALL
                  SELECT id, -quantity FROM unnest(p_product_ids, p_quantities) AS w (id, quantity)
                 ) AS m (product_id, quantity)
           GROUP BY product_id
      ) d
     WHERE pr.id = ANY (v_held_ids || p_product_ids) AND pr.id = d.product_id AND d.delta <> 0;

    DELETE FROM order_items WHERE order_id = p_order_id;
    INSERT INTO order_items (order_id, line_no, product_id, name, unit_price, quantity, line_total)
    SELECT p_order_id, l.line_no, l.product_id, l.name, l.unit_price, l.quantity, l.line_total
      FROM unnest(v_priced.lines) WITH ORDINALITY AS l (product_id, name, unit_price, quantity, line_total, line_no);

    UPDATE orders SET total = v_priced.total, currency = v_priced.currency, updated_at = now()
     WHERE id = p_order_id
    RETURNING * INTO v_order;

    RETURN QUERY SELECT v_order, v_priced.lines, NULL::order_lines_refusal;
END
$$;
