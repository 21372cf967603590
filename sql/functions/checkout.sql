-- Checkout: an order's shipping address, shipping method and discount, checked and
-- priced inside the one call that reserves (or re-reserves) the order's stock
-- (create_order and replace_order_items, orders.sql), and the redemptions that pending
-- orders hold. Only an order that names a shipping method or a discount code reads
-- those rows: an order without them costs what it did before.
--
-- Lock order (the same as orders.sql's, which it continues): the customer's row, the
-- order row(s), the product rows in ascending id order, then the discount rows in
-- ascending id order. A discount's row is taken last, when everything else about the
-- order has been decided: so a popular code is held for the shortest time, and no
-- transaction that holds a discount's row ever waits for a product's.
--
-- Redemptions: discounts.times_redeemed counts the orders holding the code (pending) or
-- having used it (paid and later). A new redemption is taken under the discount's row
-- lock after every rule passed on the locked row (times_redeemed < max_redemptions is
-- then exact, whatever the number of processes); the per-customer count is exact
-- because every order change of a customer runs under that customer's row lock. A
-- pending order's redemption is given back when it is cancelled, expires or is deleted
-- (end_pending_orders) or when its code is removed or replaced (replace_order_items).

-- Seconds until a key of rate_limits admits another attempt (its p_max attempts of
-- the current window used up), without counting one; NULL when it admits.
CREATE OR REPLACE FUNCTION rate_limit_wait(p_key text, p_max integer, p_window double precision) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT greatest(1, ceil(extract(epoch FROM r.window_start + make_interval(secs => p_window) - now())))::integer
      FROM rate_limits r
     WHERE r.key = p_key AND r.attempts >= p_max AND r.window_start > now() - make_interval(secs => p_window)
$$;

-- What a discount takes off a subtotal: floor(subtotal * value / 100) for a percent
-- one (computed without the product, which could pass a bigint), min(value,
-- subtotal) for a fixed one.
CREATE OR REPLACE FUNCTION discount_amount(p_kind text, p_value bigint, p_subtotal bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_kind
        WHEN 'percent' THEN (p_subtotal / 100) * p_value + (p_subtotal % 100) * p_value / 100
        ELSE least(p_value, p_subtotal)
    END
$$;

-- Why a discount does not apply to an order of p_subtotal in p_currency ('discount_disabled',
-- 'discount_not_started', 'discount_ended', 'discount_currency', 'discount_min_subtotal');
-- NULL when it does. Its redemption limits are not looked at here.
CREATE OR REPLACE FUNCTION discount_refusal(p_discount discounts, p_subtotal bigint, p_currency text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN NOT p_discount.enabled THEN jsonb_build_object('code', 'discount_disabled')
        WHEN p_discount.starts_at > now() THEN jsonb_build_object('code', 'discount_not_started')
        WHEN p_discount.ends_at <= now() THEN jsonb_build_object('code', 'discount_ended')
        WHEN p_discount.currency <> p_currency
            THEN jsonb_build_object('code', 'discount_currency', 'currency', p_discount.currency)
        WHEN p_subtotal < p_discount.min_subtotal
            THEN jsonb_build_object('code', 'discount_min_subtotal', 'min_subtotal', p_discount.min_subtotal)
    END
$$;

-- An order's shipping: the address it ships to (p_address, or the customer's address
-- p_address_id from the book), its method and what shipping costs it. Refusals:
-- 'shipping_address_unknown' (not one of the customer's addresses), 'shipping_method_unknown'
-- (unknown, deleted or disabled), 'shipping_method_currency', 'shipping_address_required',
-- 'shipping_country'.
CREATE OR REPLACE FUNCTION price_shipping(
    p_user_id bigint,
    p_subtotal bigint,
    p_currency text,
    p_address postal_address,
    p_address_id bigint,
    p_method_id bigint,
    OUT shipping_address postal_address,
    OUT shipping_method order_shipping_method,
    OUT shipping bigint,
    OUT refusal jsonb
)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_method shipping_methods;
BEGIN
    shipping := 0;
    shipping_address := p_address;
    IF p_address_id IS NOT NULL THEN
        -- (Into a composite target, the columns fill its fields in order.)
        SELECT a.name, a.line1, a.line2, a.city, a.region, a.postal_code, a.country, a.phone
          INTO shipping_address
          FROM addresses a WHERE a.id = p_address_id AND a.user_id = p_user_id;
        IF NOT FOUND THEN
            refusal := jsonb_build_object('code', 'shipping_address_unknown');
            RETURN;
        END IF;
    END IF;
    IF p_method_id IS NULL THEN
        RETURN;
    END IF;
    SELECT * INTO v_method FROM shipping_methods m
     WHERE m.id = p_method_id AND m.deleted_at IS NULL AND m.enabled;
    IF NOT FOUND THEN
        refusal := jsonb_build_object('code', 'shipping_method_unknown');
    ELSIF v_method.currency <> p_currency THEN
        refusal := jsonb_build_object('code', 'shipping_method_currency', 'currency', v_method.currency);
    ELSIF shipping_address IS NULL THEN
        refusal := jsonb_build_object('code', 'shipping_address_required');
    ELSIF v_method.countries <> '{}' AND NOT (shipping_address).country = ANY (v_method.countries) THEN
        refusal := jsonb_build_object('code', 'shipping_country', 'country', (shipping_address).country);
    ELSE
        shipping_method := ROW(v_method.id, v_method.name, v_method.price)::order_shipping_method;
        shipping := CASE WHEN p_subtotal >= v_method.free_over THEN 0 ELSE v_method.price END;
    END IF;
END
$$;

-- An order's discount: the one it holds (p_held_id, re-checked against the new
-- subtotal), or the code p_code when p_set_code (NULL: none), checked, priced and, when
-- it is not the one held, redeemed: this call then holds the discount's row lock and
-- has counted the redemption (given back by the caller's transaction if the order is
-- not written). p_held_id, when the order gives it up, is locked too (ids in ascending
-- order) for the caller to give back. Refusals: 'too_many_discount_guesses'
-- (retry_after), 'discount_unknown' (an unknown code also counts as a guess,
-- p_max_unknown per p_guess_window: 0 turns that off), discount_refusal's,
-- 'discount_customer_limit' (max_per_customer), 'discount_exhausted'.
CREATE OR REPLACE FUNCTION price_discount(
    p_user_id bigint,
    p_order_id bigint,
    p_subtotal bigint,
    p_currency text,
    p_held_id bigint,
    p_set_code boolean,
    p_code text,
    p_max_unknown integer,
    p_guess_window double precision,
    OUT discount_id bigint,
    OUT discount order_discount,
    OUT refusal jsonb
)
LANGUAGE plpgsql AS $$
DECLARE
    v_key text;
    v_wait integer;
    v_discount discounts;
    v_used integer;
BEGIN
    IF NOT p_set_code THEN
        IF p_held_id IS NULL THEN
            RETURN;
        END IF;
        SELECT * INTO v_discount FROM discounts d WHERE d.id = p_held_id AND d.deleted_at IS NULL;
        IF NOT FOUND THEN
            refusal := jsonb_build_object('code', 'discount_unknown');
            RETURN;
        END IF;
    ELSIF p_code IS NULL THEN
        RETURN;
    ELSE
        -- Guessing: refused once the customer's unknown codes used up the window,
        -- whatever the code (the answer then tells nothing about which codes exist).
        v_key := 'discount-guess:' || p_user_id;
        IF p_max_unknown > 0 THEN
            v_wait := rate_limit_wait(v_key, p_max_unknown, p_guess_window);
            IF v_wait IS NOT NULL THEN
                refusal := jsonb_build_object('code', 'too_many_discount_guesses', 'retry_after', v_wait);
                RETURN;
            END IF;
        END IF;
        SELECT d.id INTO discount_id FROM discounts d WHERE d.code = upper(p_code) AND d.deleted_at IS NULL;
        IF NOT FOUND THEN
            IF p_max_unknown > 0 THEN
                PERFORM rate_limit_hit(ARRAY[v_key], ARRAY[p_max_unknown], ARRAY[p_guess_window],
                                       ARRAY[false], ARRAY[1.0::double precision]);
            END IF;
            refusal := jsonb_build_object('code', 'discount_unknown');
            RETURN;
        END IF;
        IF discount_id IS DISTINCT FROM p_held_id THEN
            -- A new redemption: the rules and the limits on the locked row (and the
            -- held discount, given up, locked with it in id order).
            PERFORM 1 FROM discounts d WHERE d.id IN (discount_id, p_held_id) ORDER BY d.id FOR NO KEY UPDATE;
            SELECT * INTO v_discount FROM discounts d WHERE d.id = discount_id AND d.deleted_at IS NULL;
            IF NOT FOUND THEN
                discount_id := NULL;
                refusal := jsonb_build_object('code', 'discount_unknown');
                RETURN;
            END IF;
            refusal := discount_refusal(v_discount, p_subtotal, p_currency);
            IF refusal IS NULL AND v_discount.max_per_customer IS NOT NULL THEN
                -- Counted up to the limit only. Under the customer's row lock, which
                -- every change of this customer's orders takes first.
                SELECT count(*) INTO v_used
                  FROM (SELECT 1 FROM orders o
                         WHERE o.discount_id = v_discount.id AND o.user_id = p_user_id
                           AND o.status NOT IN ('cancelled', 'expired') AND o.id IS DISTINCT FROM p_order_id
                         LIMIT v_discount.max_per_customer) AS used;
                IF v_used >= v_discount.max_per_customer THEN
                    refusal := jsonb_build_object(
                        'code', 'discount_customer_limit', 'max_per_customer', v_discount.max_per_customer);
                END IF;
            END IF;
            IF refusal IS NULL AND v_discount.times_redeemed >= v_discount.max_redemptions THEN
                refusal := jsonb_build_object('code', 'discount_exhausted');
            END IF;
            IF refusal IS NOT NULL THEN
                discount_id := NULL;
                RETURN;
            END IF;
            UPDATE discounts d SET times_redeemed = d.times_redeemed + 1 WHERE d.id = v_discount.id;
            discount := ROW(v_discount.code, discount_amount(v_discount.kind, v_discount.value, p_subtotal))::order_discount;
            RETURN;
        END IF;
        SELECT * INTO v_discount FROM discounts d WHERE d.id = discount_id;
    END IF;
    -- The discount the order holds (and keeps): the rules again, for the new subtotal.
    refusal := discount_refusal(v_discount, p_subtotal, p_currency);
    IF refusal IS NULL THEN
        discount_id := v_discount.id;
        discount := ROW(v_discount.code, discount_amount(v_discount.kind, v_discount.value, p_subtotal))::order_discount;
    ELSE
        discount_id := NULL;
    END IF;
END
$$;

-- Give back one redemption per entry of p_discount_ids (an id once per order that gave
-- its redemption up), the rows locked in id order.
CREATE OR REPLACE FUNCTION release_redemptions(p_discount_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM discounts d WHERE d.id = ANY (p_discount_ids) ORDER BY d.id FOR NO KEY UPDATE;
    UPDATE discounts d SET times_redeemed = d.times_redeemed - r.n
      FROM (SELECT u.id, count(*)::integer AS n FROM unnest(p_discount_ids) AS u (id) GROUP BY u.id) r
     WHERE d.id = ANY (p_discount_ids) AND d.id = r.id;
END
$$;
