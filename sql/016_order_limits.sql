-- Stock hoarding: create_order (015) behind the per-customer limits
-- (ORDER_MAX_PENDING_PER_USER, ORDER_MAX_HELD_UNITS_PER_PRODUCT), refusing by name as
-- the line rules do: 'too_many_pending', or 'too_many_held' (product_ids: the product
-- that would exceed its held units). A function of its own so that create_order can
-- change without touching the limits. The customer's row is locked first (lock order:
-- user, order, products), so two processes creating orders for one customer decide
-- one after the other.
CREATE FUNCTION create_order_within_limits(
    p_user_id bigint,
    p_product_ids bigint[],
    p_quantities integer[],
    p_ttl_seconds double precision,
    p_max_pending integer,
    p_max_held integer
) RETURNS TABLE (placed orders, lines order_line[], refusal order_lines_refusal)
LANGUAGE plpgsql AS $$
DECLARE
    v_product bigint;
BEGIN
    PERFORM 1 FROM users WHERE id = p_user_id FOR NO KEY UPDATE;
    -- Counted up to the limit only: the check costs at most that many index entries,
    -- however many pending orders a customer holds.
    IF (SELECT count(*) FROM (SELECT 1 FROM orders
                               WHERE user_id = p_user_id AND status = 'pending' AND deleted_at IS NULL
                               LIMIT p_max_pending) AS held) >= p_max_pending THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_line[],
                            ROW('too_many_pending', NULL, NULL, NULL)::order_lines_refusal;
        RETURN;
    END IF;
    v_product := held_units_over(p_user_id, NULL, p_product_ids, p_quantities, p_max_held);
    IF v_product IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_line[],
                            ROW('too_many_held', ARRAY[v_product], NULL, NULL)::order_lines_refusal;
        RETURN;
    END IF;
    RETURN QUERY SELECT c.placed, c.lines, c.refusal
                   FROM create_order(p_user_id, p_product_ids, p_quantities, p_ttl_seconds) c;
END
$$;
