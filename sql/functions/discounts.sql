-- Discount codes as the admin changes them (the tables: sql/026_checkout.sql; how
-- orders redeem them: checkout.sql).

-- A code's times_redeemed: the orders holding it (pending) or having used it (paid and
-- later); for a code with max_redemptions, the count its takers keep (checkout.sql).
CREATE OR REPLACE FUNCTION times_redeemed(p_discount discounts) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_discount.max_redemptions IS NULL THEN redeeming_orders(p_discount.id)
                ELSE p_discount.redeemed END
$$;

-- The orders holding (pending) or having used (paid and later) a code.
CREATE OR REPLACE FUNCTION redeeming_orders(p_discount_id bigint) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer FROM orders o
     WHERE o.discount_id = p_discount_id AND o.status NOT IN ('cancelled', 'expired')
$$;

-- A new code (a duplicate live code fails on discounts_code_live_key, the kinds'
-- values and the window on their CHECKs).
CREATE OR REPLACE FUNCTION create_discount(
    p_code text, p_kind text, p_value bigint, p_currency text, p_min_subtotal bigint, p_starts_at timestamptz,
    p_ends_at timestamptz, p_max_redemptions integer, p_max_per_customer integer, p_enabled boolean
) RETURNS discounts
LANGUAGE sql AS $$
    INSERT INTO discounts (code, kind, value, currency, min_subtotal, starts_at, ends_at, max_redemptions,
                           max_per_customer, enabled)
    VALUES (p_code, p_kind, p_value, p_currency, p_min_subtotal, p_starts_at, p_ends_at, p_max_redemptions,
            p_max_per_customer, p_enabled)
    RETURNING *
$$;

-- Change the fields named in p_set of a live code (the others' arguments are ignored),
-- holding the code's advisory lock alone (checkout.sql): that waits for every order in
-- flight that takes or gives back the code, so the orders counted next are final and
-- every later order reads the new rules. A new max_redemptions starts the kept count
-- from them. Refusals: 'discount_not_found', 'discount_below_redeemed'
-- (max_redemptions below times_redeemed).
CREATE OR REPLACE FUNCTION update_discount(
    p_id bigint, p_set text[], p_kind text, p_value bigint, p_currency text, p_min_subtotal bigint,
    p_starts_at timestamptz, p_ends_at timestamptz, p_max_redemptions integer, p_max_per_customer integer,
    p_enabled boolean
) RETURNS TABLE (changed discounts, refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_discount discounts;
    v_code text;
    v_redeemed integer;
BEGIN
    SELECT d.code INTO v_code FROM discounts d WHERE d.id = p_id AND d.deleted_at IS NULL;
    IF FOUND THEN
        PERFORM pg_advisory_xact_lock(x'5707D15C'::integer, hashtext(v_code));
        PERFORM 1 FROM discounts d WHERE d.id = p_id AND d.deleted_at IS NULL FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::discounts, jsonb_build_object('code', 'discount_not_found');
        RETURN;
    END IF;
    IF 'max_redemptions' = ANY (p_set) AND p_max_redemptions IS NOT NULL THEN
        v_redeemed := redeeming_orders(p_id);
        IF p_max_redemptions < v_redeemed THEN
            RETURN QUERY SELECT NULL::discounts, jsonb_build_object('code', 'discount_below_redeemed');
            RETURN;
        END IF;
    END IF;
    UPDATE discounts d SET
        kind = CASE WHEN 'kind' = ANY (p_set) THEN p_kind ELSE d.kind END,
        value = CASE WHEN 'value' = ANY (p_set) THEN p_value ELSE d.value END,
        currency = CASE WHEN 'currency' = ANY (p_set) THEN p_currency ELSE d.currency END,
        min_subtotal = CASE WHEN 'min_subtotal' = ANY (p_set) THEN p_min_subtotal ELSE d.min_subtotal END,
        starts_at = CASE WHEN 'starts_at' = ANY (p_set) THEN p_starts_at ELSE d.starts_at END,
        ends_at = CASE WHEN 'ends_at' = ANY (p_set) THEN p_ends_at ELSE d.ends_at END,
        max_redemptions = CASE WHEN 'max_redemptions' = ANY (p_set) THEN p_max_redemptions ELSE d.max_redemptions END,
        max_per_customer = CASE WHEN 'max_per_customer' = ANY (p_set) THEN p_max_per_customer
                                ELSE d.max_per_customer END,
        enabled = CASE WHEN 'enabled' = ANY (p_set) THEN p_enabled ELSE d.enabled END,
        redeemed = coalesce(v_redeemed, d.redeemed),
        updated_at = now()
     WHERE d.id = p_id
    RETURNING d.* INTO v_discount;
    RETURN QUERY SELECT v_discount, NULL::jsonb;
END
$$;
