-- Checkout: an order's shipping address, shipping method and discount, checked and
-- priced inside the one call that reserves (or re-reserves) the order's stock
-- (create_order and replace_order_items, orders.sql), and the redemptions that pending
-- orders hold. Only an order that names a shipping method or a discount code reads
-- those rows: an order without them costs what it did before.
--
-- Lock order (the same as orders.sql's, which it continues): the customer's row, the
-- order row(s), the product rows in ascending id order, then the advisory locks of the
-- codes involved (shared), then those codes' rows in ascending id order. So a code's
-- rows are taken when everything else about the order has been decided, and a
-- transaction that holds one never waits for a product's.
--
-- Redemptions: a code's times_redeemed is the number of orders holding it (pending) or
-- having used it (paid and later), read from the orders (times_redeemed(), on
-- orders_redeeming_idx). An order taking a code, or giving one back, holds the code's
-- advisory lock in shared mode (no row is written for it); an admin's change of the
-- code takes it alone (update_discount, discounts.sql), so it waits for every order in
-- flight and every later order reads the changed rules. A code without
-- max_redemptions costs its orders nothing more: they write nothing to its row, so
-- orders using one popular code do not queue for it. A code with max_redemptions also
-- keeps the count in `redeemed`: its takers read its row FOR NO KEY UPDATE and so
-- decide one after the other, each on the count the previous one committed
-- (redeemed < max_redemptions is then exact on any number of processes; a CHECK backs
-- it), and an order giving it back takes one off under the same lock. The
-- per-customer count is exact because every change of a customer's orders runs under
-- that customer's row lock. A pending order's redemption is given back when it is
-- cancelled, expires or is deleted (end_pending_orders) or when its code is removed or
-- replaced (replace_order_items).
--
-- The advisory lock of a code is the two-key one (x'5707D15C', hashtext(code)): the
-- first key names "storefront discount codes" among advisory locks (the liveness
-- locks' is 0x5354; migrations use the one-key form).

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

-- Take one redemption of p_discount, whose advisory lock the caller holds (and, for a
-- code with max_redemptions, its row FOR NO KEY UPDATE), for the customer's order
-- p_order_id (NULL: a new one): the rules on that row, then the limits; NULL, or the
-- refusal (discount_refusal's, 'discount_customer_limit' with max_per_customer,
-- 'discount_exhausted').
CREATE OR REPLACE FUNCTION take_redemption(
    p_discount discounts, p_user_id bigint, p_order_id bigint, p_subtotal bigint, p_currency text
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_refusal jsonb;
    v_used bigint;
BEGIN
    v_refusal := discount_refusal(p_discount, p_subtotal, p_currency);
    IF v_refusal IS NULL AND p_discount.max_per_customer IS NOT NULL THEN
        -- Counted up to the limit only.
        SELECT count(*) INTO v_used
          FROM (SELECT 1 FROM orders o
                 WHERE o.discount_id = p_discount.id AND o.user_id = p_user_id
                   AND o.status NOT IN ('cancelled', 'expired') AND o.id IS DISTINCT FROM p_order_id
                 LIMIT p_discount.max_per_customer) AS used;
        IF v_used >= p_discount.max_per_customer THEN
            v_refusal := jsonb_build_object(
                'code', 'discount_customer_limit', 'max_per_customer', p_discount.max_per_customer);
        END IF;
    END IF;
    IF v_refusal IS NULL AND p_discount.max_redemptions IS NOT NULL THEN
        IF p_discount.redeemed >= p_discount.max_redemptions THEN
            v_refusal := jsonb_build_object('code', 'discount_exhausted');
        ELSE
            UPDATE discounts d SET redeemed = d.redeemed + 1 WHERE d.id = p_discount.id;
        END IF;
    END IF;
    RETURN v_refusal;
END
$$;

-- An order's discount: the one it holds (p_held_id, re-checked against the new
-- subtotal), or the code p_code when p_set_code (NULL: none), checked, priced and, when
-- it is not the one held, redeemed (take_redemption: this call then holds the code's
-- locks, and a kept count is given back with everything else if the caller's
-- transaction does not commit). When the order gives up a held code for another, the
-- held code's locks are taken too (in the lock order) for the caller to give it back.
-- Refusals: 'too_many_discount_guesses' (retry_after), 'discount_unknown' (an unknown
-- code also counts as a guess, p_max_unknown per p_guess_window: 0 turns that off),
-- take_redemption's.
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
    v_discount discounts;
BEGIN
    IF p_set_code AND p_code IS NOT NULL THEN
        -- Guessing: once the customer's unknown codes used up the window, every code is
        -- refused, a real one too (the answer then tells nothing about which codes
        -- exist). Under the customer's row lock, like the count of a new guess below.
        -- The same statement takes the code's advisory lock (see the header).
        v_key := 'discount-guess:' || p_user_id;
        SELECT (SELECT jsonb_build_object('code', 'too_many_discount_guesses', 'retry_after',
                           greatest(1, ceil(extract(epoch FROM r.window_start + make_interval(secs => p_guess_window)
                                                                - now()))))
                  FROM rate_limits r
                 WHERE p_max_unknown > 0 AND r.key = v_key AND r.attempts >= p_max_unknown
                   AND r.window_start > now() - make_interval(secs => p_guess_window))
          INTO refusal
          FROM pg_advisory_xact_lock_shared(x'5707D15C'::integer, hashtext(upper(p_code)));
        IF refusal IS NOT NULL THEN
            RETURN;
        END IF;
        -- The code's row, read once its lock is held (a statement of its own).
        SELECT * INTO v_discount FROM discounts d WHERE d.code = upper(p_code) AND d.deleted_at IS NULL;
        IF FOUND AND v_discount.max_redemptions IS NOT NULL AND v_discount.id IS DISTINCT FROM p_held_id THEN
            SELECT * INTO v_discount FROM discounts d WHERE d.id = v_discount.id AND d.deleted_at IS NULL
               FOR NO KEY UPDATE;
        END IF;
        IF NOT FOUND THEN
            IF p_max_unknown > 0 THEN
                PERFORM rate_limit_hit(ARRAY[v_key], ARRAY[p_max_unknown], ARRAY[p_guess_window],
                                       ARRAY[false], ARRAY[1.0::double precision]);
            END IF;
            refusal := jsonb_build_object('code', 'discount_unknown');
            RETURN;
        END IF;
        IF v_discount.id IS DISTINCT FROM p_held_id THEN
            IF p_held_id IS NOT NULL THEN
                -- The code given up is given back by the caller: its advisory lock now,
                -- then both rows in id order, the new one read again once locked.
                PERFORM pg_advisory_xact_lock_shared(x'5707D15C'::integer, hashtext(d.code))
                   FROM discounts d WHERE d.id = p_held_id;
                PERFORM 1 FROM discounts d WHERE d.id IN (v_discount.id, p_held_id) ORDER BY d.id FOR NO KEY UPDATE;
                SELECT * INTO v_discount FROM discounts d WHERE d.id = v_discount.id;
            END IF;
            IF v_discount.max_redemptions IS NULL AND v_discount.max_per_customer IS NULL THEN
                refusal := discount_refusal(v_discount, p_subtotal, p_currency);  -- no limits to count
            ELSE
                refusal := take_redemption(v_discount, p_user_id, p_order_id, p_subtotal, p_currency);
            END IF;
            IF refusal IS NULL THEN
                discount_id := v_discount.id;
                discount := ROW(v_discount.code, discount_amount(v_discount.kind, v_discount.value, p_subtotal));
            END IF;
            RETURN;
        END IF;
    ELSIF p_set_code OR p_held_id IS NULL THEN
        RETURN;  -- no discount
    ELSE
        SELECT * INTO v_discount FROM discounts d WHERE d.id = p_held_id AND d.deleted_at IS NULL;
        IF NOT FOUND THEN
            refusal := jsonb_build_object('code', 'discount_unknown');
            RETURN;
        END IF;
    END IF;
    -- The code the order holds stays: its rules again, for the new subtotal.
    refusal := discount_refusal(v_discount, p_subtotal, p_currency);
    IF refusal IS NULL THEN
        discount_id := v_discount.id;
        discount := ROW(v_discount.code, discount_amount(v_discount.kind, v_discount.value, p_subtotal));
    END IF;
END
$$;

-- Give back the redemptions of orders that gave them up (p_discount_ids: one entry per
-- order): under each code's advisory lock, a code with max_redemptions takes them off
-- its count (the rows locked in id order); a code without one counts its orders anyway.
CREATE OR REPLACE FUNCTION release_redemptions(p_discount_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_limited bigint[];
BEGIN
    PERFORM pg_advisory_xact_lock_shared(x'5707D15C'::integer, hashtext(d.code))
       FROM discounts d WHERE d.id = ANY (p_discount_ids);
    -- Read once the locks are held (a statement of its own: it sees an admin's change).
    SELECT array_agg(locked.id) INTO v_limited
      FROM (SELECT d.id FROM discounts d
             WHERE d.id = ANY (p_discount_ids) AND d.max_redemptions IS NOT NULL
             ORDER BY d.id
               FOR NO KEY UPDATE) locked;
    IF v_limited IS NOT NULL THEN
        UPDATE discounts d SET redeemed = d.redeemed - g.n
          FROM (SELECT u.id, count(*)::integer AS n FROM unnest(p_discount_ids) AS u (id) GROUP BY u.id) g
         WHERE d.id = ANY (v_limited) AND d.id = g.id;
    END IF;
END
$$;
