-- Orders: the item rules, and every change of an order, each one call (one round trip,
-- its own transaction), writing the change's event itself (emit_event, events.sql).
--
-- Lock order, everywhere: the customer's row (when hold limits are checked; a batch's
-- customers in ascending id order), then the order row(s), then the product rows in
-- ascending id order, then the advisory locks and rows of the discount codes involved
-- (checkout.sql), and last the hold counters (move_holds: once per transaction, in key
-- order; nothing after it waits for a lock not already held); so concurrent
-- transactions can wait for each other but never deadlock. Statuses are checked on
-- the locked rows, so no decision is made on stale data.
--
-- A refusal comes back as a jsonb document, {"code": ..., and what it is about}, with
-- nothing written (db/refusals.py decodes it; handlers/refusals.py words it). Merging
-- repeated products and the per-item quantity limit happen before, in the domain:
-- these functions take each product once.

-- An order's items as the API shows them, in line order. PL/pgSQL, which keeps its
-- plan for the session: it is called from statements (events, settles, order reads),
-- where an SQL-language function that reads a table is planned again on every call.
CREATE OR REPLACE FUNCTION order_items_of(p_order_id bigint) RETURNS order_item[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(ROW(i.product_id, i.name, i.unit_price, i.quantity, i.line_total)::order_item
                                  ORDER BY i.line_no), '{}')
          FROM order_items i
         WHERE i.order_id = p_order_id
    );
END
$$;

-- An order as its events carry it: its row and its items.
CREATE OR REPLACE FUNCTION order_snapshot(p_order orders, p_items order_item[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT to_jsonb(p_order) || jsonb_build_object('items', to_jsonb(p_items))
$$;

-- The item rules in one place: whether these items can be ordered (every product known
-- and live, one currency, enough stock, counting what the order already holds: the
-- held items), and their prices. Creating an order and replacing its items both ask it.
-- Refusals: 'unknown_products' (product_ids: every unknown or deleted one, in request
-- order), 'mixed_currencies', 'short_stock' (the first item that cannot be covered:
-- product_id, name, available).
CREATE OR REPLACE FUNCTION price_order_items(
    p_product_ids bigint[],
    p_quantities integer[],
    p_held_ids bigint[],
    p_held_quantities integer[],
    OUT items order_item[],
    OUT currency text,
    OUT total bigint,
    OUT refusal jsonb
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
           array_agg(ROW(w.product_id, p.name, p.price, w.quantity, p.price * w.quantity)::order_item ORDER BY w.line_no),
           sum(p.price * w.quantity)::bigint
      INTO v_unknown, v_currencies, currency, v_short_id, v_short_name, v_short_available, items, total
      FROM unnest(p_product_ids, p_quantities) WITH ORDINALITY AS w (product_id, quantity, line_no)
      LEFT JOIN (SELECT pr.id, pr.name, pr.price, pr.stock, pr.currency
                   FROM products pr
                  WHERE pr.id = ANY (p_product_ids) AND pr.deleted_at IS NULL
                  ORDER BY pr.id
                    FOR UPDATE) p ON p.id = w.product_id
      LEFT JOIN unnest(p_held_ids, p_held_quantities) AS h (product_id, quantity) ON h.product_id = w.product_id;

    IF v_unknown IS NOT NULL OR v_currencies = 0 THEN
        refusal := jsonb_build_object('code', 'unknown_products', 'product_ids', coalesce(v_unknown, '{}'));
    ELSIF v_currencies > 1 THEN
        refusal := jsonb_build_object('code', 'mixed_currencies');
    ELSIF v_short_id IS NOT NULL THEN
        refusal := jsonb_build_object(
            'code', 'short_stock', 'product_id', v_short_id, 'name', v_short_name, 'available', v_short_available);
    END IF;
    IF refusal IS NOT NULL THEN
        items := NULL;
    END IF;
END
$$;

-- What pending orders hold moves (sql/028_hold_counters.sql): element i of the arrays
-- is p_units[i] units of p_product_ids[i] taken (positive) or given back (negative) by
-- an order of customer p_user_ids[i] placed from p_client_ips[i], and p_orders[i] the
-- change of that customer's pending orders it carries (an order's on one element
-- only). Each counter is moved once, in key order, and those it empties are removed
-- (by key: only a decrease can empty one): the last lock a transaction takes (the
-- lock order above; what follows it, if anything, touches rows it already holds).
--
-- One element (an order of one product placed, paid or ended) takes a path of its
-- own, of single-row statements in the same order: the grouping and sorting that a
-- batch needs cost more than the moves themselves, about 6% of a payment's
-- instructions in PostgreSQL (loadtests/pg_instructions.py).
CREATE OR REPLACE FUNCTION move_holds(
    p_user_ids bigint[],
    p_client_ips text[],
    p_product_ids bigint[],
    p_units integer[],
    p_orders integer[]
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- The keys of the counters this move emptied (each move says which it left at 0).
    v_users bigint[];
    v_products bigint[];
    v_ips text[];
    v_left integer;  -- what a one-element move left in a counter
BEGIN
    IF cardinality(p_user_ids) = 1 THEN
        IF p_orders[1] <> 0 THEN
            INSERT INTO customer_pending_orders AS c (user_id, orders) VALUES (p_user_ids[1], p_orders[1])
                ON CONFLICT (user_id) DO UPDATE SET orders = c.orders + excluded.orders
            RETURNING c.orders INTO v_left;
            IF v_left = 0 THEN
                DELETE FROM customer_pending_orders c WHERE c.user_id = p_user_ids[1] AND c.orders = 0;
            END IF;
        END IF;
        IF p_units[1] <> 0 THEN
            INSERT INTO customer_holds AS c (user_id, product_id, units)
            VALUES (p_user_ids[1], p_product_ids[1], p_units[1])
                ON CONFLICT (user_id, product_id) DO UPDATE SET units = c.units + excluded.units
            RETURNING c.units INTO v_left;
            IF v_left = 0 THEN
                DELETE FROM customer_holds c
                 WHERE c.user_id = p_user_ids[1] AND c.product_id = p_product_ids[1] AND c.units = 0;
            END IF;
        END IF;
        IF p_units[1] <> 0 AND p_client_ips[1] IS NOT NULL THEN
            INSERT INTO address_holds AS a (client_ip, product_id, units)
            VALUES (p_client_ips[1], p_product_ids[1], p_units[1])
                ON CONFLICT (client_ip, product_id) DO UPDATE SET units = a.units + excluded.units
            RETURNING a.units INTO v_left;
            IF v_left = 0 THEN
                DELETE FROM address_holds a
                 WHERE a.client_ip = p_client_ips[1] AND a.product_id = p_product_ids[1] AND a.units = 0;
            END IF;
        END IF;
        RETURN;
    END IF;

    WITH moved AS (
        INSERT INTO customer_pending_orders AS c (user_id, orders)
        SELECT m.user_id, sum(m.orders) FROM unnest(p_user_ids, p_orders) AS m (user_id, orders)
         GROUP BY m.user_id HAVING sum(m.orders) <> 0 ORDER BY m.user_id
            ON CONFLICT (user_id) DO UPDATE SET orders = c.orders + excluded.orders
        RETURNING c.user_id, c.orders
    )
    SELECT array_agg(moved.user_id) FILTER (WHERE moved.orders = 0) INTO v_users FROM moved;
    IF v_users IS NOT NULL THEN  -- (rows this transaction holds: no new lock)
        DELETE FROM customer_pending_orders c WHERE c.user_id = ANY (v_users) AND c.orders = 0;
    END IF;

    WITH moved AS (
        INSERT INTO customer_holds AS c (user_id, product_id, units)
        SELECT m.user_id, m.product_id, sum(m.units)
          FROM unnest(p_user_ids, p_product_ids, p_units) AS m (user_id, product_id, units)
         GROUP BY m.user_id, m.product_id HAVING sum(m.units) <> 0 ORDER BY m.user_id, m.product_id
            ON CONFLICT (user_id, product_id) DO UPDATE SET units = c.units + excluded.units
        RETURNING c.user_id, c.product_id, c.units
    )
    SELECT array_agg(moved.user_id) FILTER (WHERE moved.units = 0),
           array_agg(moved.product_id) FILTER (WHERE moved.units = 0)
      INTO v_users, v_products
      FROM moved;
    IF v_users IS NOT NULL THEN
        DELETE FROM customer_holds c USING unnest(v_users, v_products) AS k (user_id, product_id)
         WHERE c.user_id = k.user_id AND c.product_id = k.product_id AND c.units = 0;
    END IF;

    WITH moved AS (
        INSERT INTO address_holds AS a (client_ip, product_id, units)
        SELECT m.client_ip, m.product_id, sum(m.units)
          FROM unnest(p_client_ips, p_product_ids, p_units) AS m (client_ip, product_id, units)
         WHERE m.client_ip IS NOT NULL
         GROUP BY m.client_ip, m.product_id HAVING sum(m.units) <> 0 ORDER BY m.client_ip, m.product_id
            ON CONFLICT (client_ip, product_id) DO UPDATE SET units = a.units + excluded.units
        RETURNING a.client_ip, a.product_id, a.units
    )
    SELECT array_agg(moved.client_ip) FILTER (WHERE moved.units = 0),
           array_agg(moved.product_id) FILTER (WHERE moved.units = 0)
      INTO v_ips, v_products
      FROM moved;
    IF v_ips IS NOT NULL THEN
        DELETE FROM address_holds a USING unnest(v_ips, v_products) AS k (client_ip, product_id)
         WHERE a.client_ip = k.client_ip AND a.product_id = k.product_id AND a.units = 0;
    END IF;
END
$$;

-- These orders stop holding (they leave `pending`): everything they held given back.
-- (PL/pgSQL, not SQL: its statement's plan is kept, where an SQL function's is made
-- again on every call.)
CREATE OR REPLACE FUNCTION release_holds(p_order_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM move_holds(array_agg(o.user_id), array_agg(o.client_ip), array_agg(i.product_id),
                       array_agg(-i.quantity), array_agg(CASE WHEN i.line_no = 1 THEN -1 ELSE 0 END))
       FROM orders o JOIN order_items i ON i.order_id = o.id
      WHERE o.id = ANY (p_order_ids);
END
$$;

-- Stock hoarding: the refusal p_code, naming the first product of which the pending
-- orders counted plus these items plus p_offset_quantities (what this transaction's
-- earlier orders of the same holder took, or minus what the order whose items are
-- being replaced holds) would hold more than p_max_held units (0: no limit, and
-- nothing read); NULL when none would. The holder is a customer (p_user_id:
-- 'too_many_held', asked under the customer's lock), or the client address the orders
-- were placed from (p_client_ip: 'too_many_held_at_address', so that fresh accounts
-- do not multiply the limit; asked once the products are locked, so orders of the
-- same products from any account decide one after the other, and in a statement of
-- its own, which sees what the previous holder of their locks committed).
-- SQL, not PL/pgSQL: place_order calls it in a PL/pgSQL expression, where an SQL
-- function's plan lasts the transaction, so a batch of orders plans it once (about
-- 12 us a call then, against 33 us for the same query in PL/pgSQL).
CREATE OR REPLACE FUNCTION hoarding_refusal(
    p_code text,
    p_user_id bigint,
    p_client_ip text,
    p_product_ids bigint[],
    p_quantities integer[],
    p_offset_ids bigint[],
    p_offset_quantities integer[],
    p_max_held integer
) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('code', p_code, 'product_id', w.product_id)
      FROM unnest(p_product_ids, p_quantities) AS w (product_id, quantity)
     WHERE p_max_held > 0
       AND w.quantity
           + coalesce((SELECT sum(o.quantity) FROM unnest(p_offset_ids, p_offset_quantities) AS o (product_id, quantity)
                        WHERE o.product_id = w.product_id), 0)
           + coalesce(CASE WHEN p_user_id IS NOT NULL
                           THEN (SELECT c.units FROM customer_holds c
                                  WHERE c.user_id = p_user_id AND c.product_id = w.product_id)
                           ELSE (SELECT a.units FROM address_holds a
                                  WHERE a.client_ip = p_client_ip AND a.product_id = w.product_id)
                      END, 0) > p_max_held
     ORDER BY w.product_id
     LIMIT 1
$$;

-- One new pending order and its order.created event, with the caller holding the
-- customer's row lock; or a refusal with nothing written. Neither its stock nor its
-- holds are taken here: the caller updates the products and moves the hold counters
-- once for all the orders it places (create_order, one order; create_orders, a batch).
-- p_taken_ids/p_taken_quantities are the units of them this transaction's earlier
-- orders took meanwhile (they count as gone), p_taken_by_customer and
-- p_taken_at_address the part of those taken by this customer's orders and by orders
-- from this client address, and p_placed_by_customer the customer's earlier orders
-- here (they count as held and pending). The checks, in order: the customer's hoarding limits ('too_many_pending',
-- 'too_many_held'), the item rules (price_order_items, which locks the products), the
-- address's hoarding limit ('too_many_held_at_address'), then the checkout's (an order
-- that names an address, a method or a code: price_shipping, then price_discount, which
-- takes the redemption last; checkout.sql).
CREATE OR REPLACE FUNCTION place_order(
    p_user_id bigint,
    p_client_ip text,
    p_product_ids bigint[],
    p_quantities integer[],
    p_taken_ids bigint[],
    p_taken_quantities integer[],
    p_taken_by_customer integer[],
    p_taken_at_address integer[],
    p_placed_by_customer integer,
    p_ttl_seconds double precision,
    p_max_pending integer,
    p_max_held integer,
    p_max_held_at_address integer,
    p_address postal_address,
    p_address_id bigint,
    p_method_id bigint,
    p_code text,
    p_max_unknown integer,
    p_guess_window double precision
) RETURNS TABLE (changed orders, items order_item[], refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_refusal jsonb;
    v_priced record;
    v_order orders;
    v_checkout record;
    v_address postal_address := p_address;
    v_method order_shipping_method;
    v_shipping bigint := 0;
    v_discount_id bigint;
    v_discount order_discount;
BEGIN
    IF p_placed_by_customer + coalesce((SELECT c.orders FROM customer_pending_orders c WHERE c.user_id = p_user_id), 0)
       >= p_max_pending THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], jsonb_build_object('code', 'too_many_pending');
        RETURN;
    END IF;
    v_refusal := hoarding_refusal('too_many_held', p_user_id, NULL, p_product_ids, p_quantities,
                                  p_taken_ids, p_taken_by_customer, p_max_held);
    IF v_refusal IS NULL THEN
        SELECT * INTO v_priced
          FROM price_order_items(p_product_ids, p_quantities, p_taken_ids,
                                 ARRAY(SELECT -t.quantity FROM unnest(p_taken_quantities) AS t (quantity)));
        v_refusal := coalesce(v_priced.refusal, hoarding_refusal(
            'too_many_held_at_address', NULL, p_client_ip, p_product_ids, p_quantities,
            p_taken_ids, p_taken_at_address, p_max_held_at_address));
    END IF;
    -- Checkout: only an order that names them reads addresses, methods and discounts.
    IF v_refusal IS NULL AND (p_address IS NOT NULL OR p_address_id IS NOT NULL OR p_method_id IS NOT NULL) THEN
        SELECT * INTO v_checkout
          FROM price_shipping(p_user_id, v_priced.total, v_priced.currency, p_address, p_address_id, p_method_id);
        v_refusal := v_checkout.refusal;
        v_address := v_checkout.shipping_address;
        v_method := v_checkout.shipping_method;
        v_shipping := v_checkout.shipping;
    END IF;
    IF v_refusal IS NULL AND p_code IS NOT NULL THEN  -- the last check: it takes the redemption
        SELECT * INTO v_checkout
          FROM price_discount(p_user_id, NULL, v_priced.total, v_priced.currency, NULL, true, p_code,
                              p_max_unknown, p_guess_window);
        v_refusal := v_checkout.refusal;
        v_discount_id := v_checkout.discount_id;
        v_discount := v_checkout.discount;
    END IF;
    IF v_refusal IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], v_refusal;
        RETURN;
    END IF;

    INSERT INTO orders (user_id, client_ip, total, currency, expires_at,
                        shipping_address, shipping_method, shipping, discount_id, discount)
    VALUES (p_user_id, p_client_ip, v_priced.total - coalesce(v_discount.amount, 0) + v_shipping, v_priced.currency,
            now() + make_interval(secs => p_ttl_seconds),
            v_address, v_method, v_shipping, v_discount_id, v_discount)
    RETURNING * INTO v_order;

    INSERT INTO order_items (order_id, line_no, product_id, name, unit_price, quantity, line_total)
    SELECT v_order.id, i.line_no, i.product_id, i.name, i.unit_price, i.quantity, i.line_total
      FROM unnest(v_priced.items) WITH ORDINALITY AS i (product_id, name, unit_price, quantity, line_total, line_no);

    PERFORM emit_event('order.created', order_snapshot(v_order, v_priced.items));
    RETURN QUERY SELECT v_order, v_priced.items, NULL::jsonb;
END
$$;

-- A new pending order holding its stock, placed from p_client_ip, and its
-- order.created event; or place_order's refusal with nothing written. The customer's
-- row is locked first, so two processes creating orders for one customer decide one
-- after the other.
CREATE OR REPLACE FUNCTION create_order(
    p_user_id bigint,
    p_client_ip text,
    p_product_ids bigint[],
    p_quantities integer[],
    p_ttl_seconds double precision,
    p_max_pending integer,
    p_max_held integer,
    p_max_held_at_address integer,
    -- Checkout (all NULL: none): the address (inline, or one of the customer's by id),
    -- the shipping method, the discount code, and the limit on unknown codes.
    p_address postal_address,
    p_address_id bigint,
    p_method_id bigint,
    p_code text,
    p_max_unknown integer,
    p_guess_window double precision
) RETURNS TABLE (changed orders, items order_item[], refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_placed record;
BEGIN
    PERFORM 1 FROM users WHERE id = p_user_id FOR NO KEY UPDATE;
    SELECT * INTO v_placed
      FROM place_order(p_user_id, p_client_ip, p_product_ids, p_quantities, '{}', '{}', '{}', '{}', 0,
                       p_ttl_seconds, p_max_pending, p_max_held, p_max_held_at_address,
                       p_address, p_address_id, p_method_id, p_code, p_max_unknown, p_guess_window);
    IF v_placed.refusal IS NULL THEN
        -- (The id = ANY condition lets the plan find the rows by primary key.)
        UPDATE products pr SET stock = pr.stock - w.quantity, updated_at = now()
          FROM unnest(p_product_ids, p_quantities) AS w (product_id, quantity)
         WHERE pr.id = ANY (p_product_ids) AND pr.id = w.product_id;
        PERFORM move_holds(array_fill(p_user_id, ARRAY[cardinality(p_product_ids)]),
                           array_fill(p_client_ip, ARRAY[cardinality(p_product_ids)]),
                           p_product_ids, p_quantities,
                           ARRAY[1] || array_fill(0, ARRAY[cardinality(p_product_ids) - 1]));
    END IF;
    RETURN QUERY SELECT v_placed.changed, v_placed.items, v_placed.refusal;
END
$$;

-- Orders of one product each (p_product_ids[i], p_quantities[i] units) placed in one
-- transaction, in arrival order, each exactly as create_order would place it alone
-- after the ones before it: one row per order, in order (its order, or its refusal).
-- All their customers' rows are locked first, then all their products, each in
-- ascending id order (the global lock order), then their discount codes' (as
-- checkout.sql orders them); each product's stock is updated once,
-- for every order of it placed, and the hold counters moved once. So the orders that
-- arrive together (server/domain/order_batches.py) share one transaction and one
-- commit, and a hot product's lock is taken, and its row written, once per batch.
CREATE OR REPLACE FUNCTION create_orders(
    p_product_ids bigint[],
    p_user_ids bigint[],
    p_client_ips text[],
    p_quantities integer[],
    p_addresses postal_address[],
    p_address_ids bigint[],
    p_method_ids bigint[],
    p_codes text[],
    p_ttl_seconds double precision,
    p_max_pending integer,
    p_max_held integer,
    p_max_held_at_address integer,
    p_max_unknown integer,
    p_guess_window double precision
) RETURNS TABLE (changed orders, items order_item[], refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_placed record;
    v_prior record;
    -- The orders placed so far: their customers, addresses, products and units.
    v_users bigint[] := '{}';
    v_ips text[] := '{}';
    v_products bigint[] := '{}';
    v_units integer[] := '{}';
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (p_user_ids) ORDER BY id FOR NO KEY UPDATE;
    PERFORM 1 FROM products WHERE id = ANY (p_product_ids) ORDER BY id FOR UPDATE;
    -- And the codes named, as checkout.sql orders them (their advisory locks, then the
    -- rows of those with max_redemptions in id order), before the orders take them in
    -- arrival order: two batches naming two limited codes in opposite orders would
    -- otherwise deadlock.
    IF EXISTS (SELECT 1 FROM unnest(p_codes) AS c (code) WHERE c.code IS NOT NULL) THEN
        PERFORM pg_advisory_xact_lock_shared(x'5707D15C'::integer, hashtext(named.code))
           FROM (SELECT DISTINCT upper(c.code) AS code FROM unnest(p_codes) AS c (code)
                  WHERE c.code IS NOT NULL ORDER BY 1) named;
        PERFORM 1 FROM discounts d
         WHERE d.code IN (SELECT upper(c.code) FROM unnest(p_codes) AS c (code))
           AND d.deleted_at IS NULL AND d.max_redemptions IS NOT NULL
         ORDER BY d.id
           FOR NO KEY UPDATE;
    END IF;
    FOR i IN 1 .. cardinality(p_user_ids) LOOP
        SELECT coalesce(sum(u.units), 0)::integer AS taken,
               coalesce(sum(u.units) FILTER (WHERE u.user_id = p_user_ids[i]), 0)::integer AS by_customer,
               coalesce(sum(u.units) FILTER (WHERE u.client_ip = p_client_ips[i]), 0)::integer AS at_address,
               (SELECT count(*) FROM unnest(v_users) AS c (user_id) WHERE c.user_id = p_user_ids[i])::integer AS placed
          INTO v_prior
          FROM unnest(v_users, v_ips, v_products, v_units) AS u (user_id, client_ip, product_id, units)
         WHERE u.product_id = p_product_ids[i];
        SELECT * INTO v_placed
          FROM place_order(p_user_ids[i], p_client_ips[i], ARRAY[p_product_ids[i]], ARRAY[p_quantities[i]],
                           ARRAY[p_product_ids[i]], ARRAY[v_prior.taken], ARRAY[v_prior.by_customer],
                           ARRAY[v_prior.at_address], v_prior.placed, p_ttl_seconds,
                           p_max_pending, p_max_held, p_max_held_at_address,
                           p_addresses[i], p_address_ids[i], p_method_ids[i], p_codes[i],
                           p_max_unknown, p_guess_window);
        IF v_placed.refusal IS NULL THEN
            v_users := v_users || p_user_ids[i];
            v_ips := v_ips || p_client_ips[i];
            v_products := v_products || p_product_ids[i];
            v_units := v_units || p_quantities[i];
        END IF;
        RETURN QUERY SELECT v_placed.changed, v_placed.items, v_placed.refusal;
    END LOOP;
    IF v_units <> '{}' THEN
        -- (The id = ANY condition lets the plan find the rows by primary key.)
        UPDATE products pr SET stock = pr.stock - taken.units, updated_at = now()
          FROM (SELECT u.product_id, sum(u.units)::integer AS units
                  FROM unnest(v_products, v_units) AS u (product_id, units) GROUP BY u.product_id) taken
         WHERE pr.id = ANY (v_products) AND pr.id = taken.product_id;
        PERFORM move_holds(v_users, v_ips, v_products, v_units, array_fill(1, ARRAY[cardinality(v_users)]));
    END IF;
END
$$;

-- Put every unit of these orders back in stock (inside the caller's transaction, which
-- holds the orders' locks): the products locked in id order, as everywhere.
CREATE OR REPLACE FUNCTION return_stock(p_order_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_products bigint[];
BEGIN
    SELECT array_agg(locked.id) INTO v_products
      FROM (SELECT pr.id FROM products pr
             WHERE pr.id IN (SELECT i.product_id FROM order_items i WHERE i.order_id = ANY (p_order_ids))
             ORDER BY pr.id
               FOR UPDATE) locked;
    -- (The id = ANY condition lets the plan find the rows by primary key.)
    UPDATE products pr SET stock = pr.stock + held.quantity, updated_at = now()
      FROM (SELECT i.product_id, sum(i.quantity) AS quantity FROM order_items i
             WHERE i.order_id = ANY (p_order_ids) GROUP BY i.product_id) held
     WHERE pr.id = ANY (v_products) AND pr.id = held.product_id;
END
$$;

-- End pending orders the caller has locked ('cancelled' or 'expired'): their stock
-- back, the new status, each one's event (order.cancelled, order.expired), their
-- discounts' redemptions back (checkout.sql), and their holds (the last locks).
CREATE OR REPLACE FUNCTION end_pending_orders(p_order_ids bigint[], p_status text) RETURNS SETOF orders
LANGUAGE plpgsql AS $$
DECLARE
    v_order orders;
    v_ended bigint[] := '{}';
    v_discounts bigint[] := '{}';
BEGIN
    PERFORM return_stock(p_order_ids);
    FOR v_order IN
        UPDATE orders o SET status = p_status, expires_at = NULL, updated_at = now()
         WHERE o.id = ANY (p_order_ids) AND o.status = 'pending'
        RETURNING o.*
    LOOP
        PERFORM emit_event('order.' || p_status, order_snapshot(v_order, order_items_of(v_order.id)));
        v_ended := v_ended || v_order.id;
        IF v_order.discount_id IS NOT NULL THEN
            v_discounts := v_discounts || v_order.discount_id;
        END IF;
        RETURN NEXT v_order;
    END LOOP;
    IF v_discounts <> '{}' THEN
        PERFORM release_redemptions(v_discounts);
    END IF;
    PERFORM release_holds(v_ended);
END
$$;

-- Lock an order that is to change while pending (p_owner_id: only if it is this
-- user's; NULL: anyone's), and say why it may not: NULL when it may. A payment in
-- flight (`pending`) holds the order; one waiting for its customer (`requires_action`)
-- does not: the order may end meanwhile, and the reconciler then cancels that payment's
-- PaymentIntent (outside any transaction, the waiting payment of an ended order being
-- its to-do). Refusals:
-- 'order_not_found', 'wrong_status' (status), 'payment_in_flight', and 'order_expired'
-- for an order found past its expiry, which is expired on the way (event included).
CREATE OR REPLACE FUNCTION lock_pending_order(p_order_id bigint, p_owner_id bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_order record;
BEGIN
    SELECT o.status, o.expires_at <= now() AS overdue INTO v_order
      FROM orders o
     WHERE o.id = p_order_id AND o.deleted_at IS NULL AND (p_owner_id IS NULL OR o.user_id = p_owner_id)
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('code', 'order_not_found');
    END IF;
    IF v_order.status <> 'pending' THEN
        RETURN jsonb_build_object('code', 'wrong_status', 'status', v_order.status);
    END IF;
    -- A statement of its own after the lock: it sees a payment committed by whoever
    -- held the lock before (each statement of a function takes a fresh snapshot).
    IF EXISTS (SELECT 1 FROM payments p WHERE p.order_id = p_order_id AND p.status = 'pending') THEN
        RETURN jsonb_build_object('code', 'payment_in_flight');
    END IF;
    IF v_order.overdue THEN
        PERFORM end_pending_orders(ARRAY[p_order_id], 'expired');
        RETURN jsonb_build_object('code', 'order_expired');
    END IF;
    RETURN NULL;
END
$$;

-- Change a pending order (the customer's own): swap its items (p_product_ids NULL: they
-- stay), re-reserving atomically (what the order held counts as available to it), and
-- set its address, method or code (p_set_*: the ones that change; NULL values remove).
-- Its shipping and discount are checked and priced again either way (price_shipping,
-- price_discount: a new code is redeemed, one given up is given back). Refusals:
-- lock_pending_order's, the customer's hoarding limit, the item rules', the hoarding
-- limit of the address the order was placed from, the checkout's; on any, nothing
-- changes (but an overdue order is expired, and an unknown code is counted).
CREATE OR REPLACE FUNCTION replace_order_items(
    p_order_id bigint,
    p_user_id bigint,
    p_product_ids bigint[],
    p_quantities integer[],
    p_max_held integer,
    p_max_held_at_address integer,
    p_set_address boolean,
    p_address postal_address,
    p_address_id bigint,
    p_set_method boolean,
    p_method_id bigint,
    p_set_code boolean,
    p_code text,
    p_max_unknown integer,
    p_guess_window double precision
) RETURNS TABLE (changed orders, items order_item[], refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_refusal jsonb;
    v_held_ids bigint[];
    v_held_quantities integer[];
    v_given_back integer[];  -- minus v_held_quantities: what the order's own holds count
    v_priced record;
    v_order orders;
    v_items order_item[];
    v_subtotal bigint;
    v_currency text;
    v_checkout record;
    v_address postal_address;
    v_method_id bigint;
    v_method order_shipping_method;
    v_shipping bigint := 0;
    v_discount_id bigint;
    v_discount order_discount;
BEGIN
    PERFORM 1 FROM users WHERE id = p_user_id FOR NO KEY UPDATE;  -- hold limits are checked under it
    v_refusal := lock_pending_order(p_order_id, p_user_id);
    -- A payment waiting for its customer (3-D Secure) was made for the order's total:
    -- nothing that prices it changes (cancelling and expiring, which also end that
    -- payment, may).
    IF v_refusal IS NULL
       AND EXISTS (SELECT 1 FROM payments p WHERE p.order_id = p_order_id AND p.status = 'requires_action') THEN
        v_refusal := jsonb_build_object('code', 'payment_in_flight');
    END IF;
    IF v_refusal IS NULL AND p_product_ids IS NOT NULL THEN
        -- What the order holds counts for it, not against it.
        SELECT coalesce(array_agg(i.product_id), '{}'), coalesce(array_agg(i.quantity), '{}'),
               coalesce(array_agg(-i.quantity), '{}')
          INTO v_held_ids, v_held_quantities, v_given_back
          FROM order_items i WHERE i.order_id = p_order_id;
        v_refusal := hoarding_refusal('too_many_held', p_user_id, NULL, p_product_ids, p_quantities,
                                      v_held_ids, v_given_back, p_max_held);
    END IF;
    IF v_refusal IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], v_refusal;
        RETURN;
    END IF;
    SELECT * INTO v_order FROM orders o WHERE o.id = p_order_id;
    IF p_product_ids IS NOT NULL THEN
        SELECT * INTO v_priced FROM price_order_items(p_product_ids, p_quantities, v_held_ids, v_held_quantities);
        v_refusal := coalesce(v_priced.refusal, hoarding_refusal(
            'too_many_held_at_address', NULL, v_order.client_ip, p_product_ids, p_quantities,
            v_held_ids, v_given_back, p_max_held_at_address));
        v_items := v_priced.items;
        v_subtotal := v_priced.total;
        v_currency := v_priced.currency;
    ELSE
        v_items := order_items_of(p_order_id);
        v_subtotal := v_order.subtotal;
        v_currency := v_order.currency;
    END IF;

    -- Checkout: what changes, and what stays, checked and priced for the new subtotal.
    v_address := CASE WHEN p_set_address THEN p_address ELSE v_order.shipping_address END;
    v_method_id := CASE WHEN p_set_method THEN p_method_id ELSE (v_order.shipping_method).id END;
    IF v_refusal IS NULL
       AND (v_address IS NOT NULL OR (p_set_address AND p_address_id IS NOT NULL) OR v_method_id IS NOT NULL) THEN
        SELECT * INTO v_checkout
          FROM price_shipping(p_user_id, v_subtotal, v_currency, v_address,
                              CASE WHEN p_set_address THEN p_address_id END, v_method_id);
        v_refusal := v_checkout.refusal;
        v_address := v_checkout.shipping_address;
        v_method := v_checkout.shipping_method;
        v_shipping := v_checkout.shipping;
    END IF;
    IF v_refusal IS NULL AND (p_set_code OR v_order.discount_id IS NOT NULL) THEN  -- the last check
        SELECT * INTO v_checkout
          FROM price_discount(p_user_id, p_order_id, v_subtotal, v_currency, v_order.discount_id, p_set_code, p_code,
                              p_max_unknown, p_guess_window);
        v_refusal := v_checkout.refusal;
        v_discount_id := v_checkout.discount_id;
        v_discount := v_checkout.discount;
    END IF;
    IF v_refusal IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], v_refusal;
        RETURN;
    END IF;

    IF p_product_ids IS NOT NULL THEN
        -- Each product's stock moves by what the order held minus what it now wants.
        UPDATE products pr SET stock = pr.stock + d.delta, updated_at = now()
          FROM (
              SELECT m.product_id, sum(m.quantity)::integer AS delta
                FROM (SELECT * FROM unnest(v_held_ids, v_held_quantities)
                      UNION ALL
                      SELECT w.id, -w.quantity FROM unnest(p_product_ids, p_quantities) AS w (id, quantity)
                     ) AS m (product_id, quantity)
               GROUP BY m.product_id
          ) d
         WHERE pr.id = ANY (v_held_ids || p_product_ids) AND pr.id = d.product_id AND d.delta <> 0;

        DELETE FROM order_items i WHERE i.order_id = p_order_id;
        INSERT INTO order_items (order_id, line_no, product_id, name, unit_price, quantity, line_total)
        SELECT p_order_id, i.line_no, i.product_id, i.name, i.unit_price, i.quantity, i.line_total
          FROM unnest(v_items) WITH ORDINALITY AS i (product_id, name, unit_price, quantity, line_total, line_no);
    END IF;
    IF v_order.discount_id IS NOT NULL AND v_order.discount_id IS DISTINCT FROM v_discount_id THEN
        PERFORM release_redemptions(ARRAY[v_order.discount_id]);  -- the code it gave up
    END IF;

    UPDATE orders o SET total = v_subtotal - coalesce(v_discount.amount, 0) + v_shipping, currency = v_currency,
           shipping_address = v_address, shipping_method = v_method, shipping = v_shipping,
           discount_id = v_discount_id, discount = v_discount, updated_at = now()
     WHERE o.id = p_order_id
    RETURNING o.* INTO v_order;
    IF p_product_ids IS NOT NULL THEN  -- the holds move by what it held minus what it now holds
        PERFORM move_holds(
            array_fill(p_user_id, ARRAY[cardinality(v_held_ids) + cardinality(p_product_ids)]),
            array_fill(v_order.client_ip, ARRAY[cardinality(v_held_ids) + cardinality(p_product_ids)]),
            v_held_ids || p_product_ids,
            v_given_back || p_quantities,
            array_fill(0, ARRAY[cardinality(v_held_ids) + cardinality(p_product_ids)]));
    END IF;

    RETURN QUERY SELECT v_order, v_items, NULL::jsonb;
END
$$;

-- pending -> cancelled (p_owner_id: only the user's own order; NULL: anyone's),
-- returning its stock, with order.cancelled. Refusals: lock_pending_order's.
CREATE OR REPLACE FUNCTION cancel_order(p_order_id bigint, p_owner_id bigint)
RETURNS TABLE (changed orders, items order_item[], refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_refusal jsonb;
    v_order orders;
BEGIN
    v_refusal := lock_pending_order(p_order_id, p_owner_id);
    IF v_refusal IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], v_refusal;
        RETURN;
    END IF;
    SELECT * INTO v_order FROM end_pending_orders(ARRAY[p_order_id], 'cancelled');
    RETURN QUERY SELECT v_order, order_items_of(p_order_id), NULL::jsonb;
END
$$;

-- A fulfilment step (paid -> shipped, shipped -> delivered), with its event.
-- Refusals: 'order_not_found', 'wrong_status' (status).
CREATE OR REPLACE FUNCTION advance_order(p_order_id bigint, p_from text, p_to text)
RETURNS TABLE (changed orders, items order_item[], refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
    v_order orders;
    v_items order_item[];
BEGIN
    SELECT o.status INTO v_status FROM orders o WHERE o.id = p_order_id AND o.deleted_at IS NULL FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], jsonb_build_object('code', 'order_not_found');
        RETURN;
    END IF;
    IF v_status <> p_from THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[],
                            jsonb_build_object('code', 'wrong_status', 'status', v_status);
        RETURN;
    END IF;
    UPDATE orders o SET status = p_to, expires_at = NULL, updated_at = now()
     WHERE o.id = p_order_id
    RETURNING o.* INTO v_order;
    v_items := order_items_of(p_order_id);
    PERFORM emit_event('order.' || p_to, order_snapshot(v_order, v_items));
    RETURN QUERY SELECT v_order, v_items, NULL::jsonb;
END
$$;

-- Hide an order whose status is one of p_deletable (a pending one is cancelled first,
-- returning its stock, with order.cancelled); answers the status it had. Refusals:
-- 'order_not_found', 'wrong_status' (status), 'payment_in_flight'.
CREATE OR REPLACE FUNCTION delete_order(p_order_id bigint, p_owner_id bigint, p_deletable text[])
RETURNS TABLE (previous_status text, refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    SELECT o.status INTO v_status
      FROM orders o
     WHERE o.id = p_order_id AND o.deleted_at IS NULL AND (p_owner_id IS NULL OR o.user_id = p_owner_id)
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::text, jsonb_build_object('code', 'order_not_found');
        RETURN;
    END IF;
    IF NOT v_status = ANY (p_deletable) THEN
        RETURN QUERY SELECT NULL::text, jsonb_build_object('code', 'wrong_status', 'status', v_status);
        RETURN;
    END IF;
    IF v_status = 'pending' THEN
        IF EXISTS (SELECT 1 FROM payments p WHERE p.order_id = p_order_id AND p.status = 'pending') THEN
            RETURN QUERY SELECT NULL::text, jsonb_build_object('code', 'payment_in_flight');
            RETURN;
        END IF;
        PERFORM end_pending_orders(ARRAY[p_order_id], 'cancelled');
    END IF;
    UPDATE orders o SET deleted_at = now(), updated_at = now() WHERE o.id = p_order_id;
    RETURN QUERY SELECT v_status, NULL::jsonb;
END
$$;

-- Expire this order if it is due and no payment of it is in flight (a live actor's
-- timer); false when it was not expired.
CREATE OR REPLACE FUNCTION expire_order(p_order_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM orders o
     WHERE o.id = p_order_id AND o.deleted_at IS NULL AND o.status = 'pending' AND o.expires_at <= now()
       FOR UPDATE;
    IF NOT FOUND OR EXISTS (SELECT 1 FROM payments p WHERE p.order_id = p_order_id AND p.status = 'pending') THEN
        RETURN false;
    END IF;
    PERFORM end_pending_orders(ARRAY[p_order_id], 'expired');
    RETURN true;
END
$$;

-- Expire up to p_batch due orders, oldest first, and return their stock; answers their
-- ids. Safe in every process at once: orders another transaction holds are skipped
-- (it is deciding about them already), so each is expired exactly once; those a live
-- actor here is timing (p_exclude) and those with a payment in flight are left.
CREATE OR REPLACE FUNCTION expire_due_orders(p_exclude bigint[], p_batch integer) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_due bigint[];
BEGIN
    SELECT array_agg(due.id) INTO v_due
      FROM (SELECT o.id FROM orders o
             WHERE o.status = 'pending' AND o.expires_at <= now() AND o.id <> ALL (p_exclude)
               AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = o.id AND p.status = 'pending')
             ORDER BY o.expires_at
             LIMIT p_batch
               FOR UPDATE SKIP LOCKED) due;
    -- Again once locked: a payment may have begun while the lock was awaited.
    SELECT array_agg(d.id) INTO v_due
      FROM unnest(v_due) AS d (id)
     WHERE NOT EXISTS (SELECT 1 FROM payments p WHERE p.order_id = d.id AND p.status = 'pending');
    IF v_due IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT e.id FROM end_pending_orders(v_due, 'expired') e;
END
$$;
