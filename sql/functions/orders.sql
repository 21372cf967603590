-- Orders: the item rules, and every change of an order, each one call (one round trip,
-- its own transaction), writing the change's event itself (emit_event, events.sql).
--
-- Lock order, everywhere: the customer's row (when hold limits are checked), then the
-- order row(s), then the product rows in ascending id order; so concurrent
-- transactions can wait for each other but never deadlock. Statuses are checked on the
-- locked rows, so no decision is made on stale data.
--
-- A refusal comes back as a jsonb document, {"code": ..., and what it is about}, with
-- nothing written (db/refusals.py decodes it; handlers/refusals.py words it). Merging
-- repeated products and the per-item quantity limit happen before, in the domain:
-- these functions take each product once.

-- An order's items as the API shows them, in line order.
CREATE OR REPLACE FUNCTION order_items_of(p_order_id bigint) RETURNS order_item[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(ROW(i.product_id, i.name, i.unit_price, i.quantity, i.line_total)::order_item
                              ORDER BY i.line_no), '{}')
      FROM order_items i
     WHERE i.order_id = p_order_id
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

-- Stock hoarding: the first product of which the customer's pending orders (but
-- p_except_order) plus these items would hold more than p_max_held units; NULL when
-- none would.
CREATE OR REPLACE FUNCTION held_units_over(
    p_user_id bigint,
    p_except_order bigint,
    p_product_ids bigint[],
    p_quantities integer[],
    p_max_held integer
) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT w.product_id
      FROM unnest(p_product_ids, p_quantities) AS w (product_id, quantity)
     WHERE w.quantity + coalesce((
               SELECT sum(i.quantity)
                 FROM orders o JOIN order_items i ON i.order_id = o.id
                WHERE o.user_id = p_user_id AND o.status = 'pending' AND o.deleted_at IS NULL
                  AND o.id IS DISTINCT FROM p_except_order AND i.product_id = w.product_id
           ), 0) > p_max_held
     ORDER BY w.product_id
     LIMIT 1
$$;

-- A new pending order holding its stock, and its order.created event; or a refusal
-- with nothing written: the customer's limits ('too_many_pending', 'too_many_held' with
-- product_id), then the item rules (price_order_items). The customer's row is locked
-- first, so two processes creating orders for one customer decide one after the other.
CREATE OR REPLACE FUNCTION create_order(
    p_user_id bigint,
    p_product_ids bigint[],
    p_quantities integer[],
    p_ttl_seconds double precision,
    p_max_pending integer,
    p_max_held integer
) RETURNS TABLE (changed orders, items order_item[], refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_product bigint;
    v_priced record;
    v_order orders;
BEGIN
    PERFORM 1 FROM users WHERE id = p_user_id FOR NO KEY UPDATE;
    -- Counted up to the limit only: the check costs at most that many index entries,
    -- however many pending orders a customer holds.
    IF (SELECT count(*) FROM (SELECT 1 FROM orders o
                               WHERE o.user_id = p_user_id AND o.status = 'pending' AND o.deleted_at IS NULL
                               LIMIT p_max_pending) AS pending) >= p_max_pending THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], jsonb_build_object('code', 'too_many_pending');
        RETURN;
    END IF;
    v_product := held_units_over(p_user_id, NULL, p_product_ids, p_quantities, p_max_held);
    IF v_product IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[],
                            jsonb_build_object('code', 'too_many_held', 'product_id', v_product);
        RETURN;
    END IF;

    SELECT * INTO v_priced FROM price_order_items(p_product_ids, p_quantities, '{}', '{}');
    IF v_priced.refusal IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], v_priced.refusal;
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
    SELECT v_order.id, i.line_no, i.product_id, i.name, i.unit_price, i.quantity, i.line_total
      FROM unnest(v_priced.items) WITH ORDINALITY AS i (product_id, name, unit_price, quantity, line_total, line_no);

    PERFORM emit_event('order.created', order_snapshot(v_order, v_priced.items));
    RETURN QUERY SELECT v_order, v_priced.items, NULL::jsonb;
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
-- back, the new status, and each one's event (order.cancelled, order.expired).
CREATE OR REPLACE FUNCTION end_pending_orders(p_order_ids bigint[], p_status text) RETURNS SETOF orders
LANGUAGE plpgsql AS $$
DECLARE
    v_order orders;
BEGIN
    PERFORM return_stock(p_order_ids);
    FOR v_order IN
        UPDATE orders o SET status = p_status, expires_at = NULL, updated_at = now()
         WHERE o.id = ANY (p_order_ids) AND o.status = 'pending'
        RETURNING o.*
    LOOP
        PERFORM emit_event('order.' || p_status, order_snapshot(v_order, order_items_of(v_order.id)));
        RETURN NEXT v_order;
    END LOOP;
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

-- Swap a pending order's items (the customer's own), re-reserving atomically: what the
-- order held counts as available to it. Refusals: lock_pending_order's, 'too_many_held',
-- the item rules'; on any, nothing changes (but an overdue order is expired).
CREATE OR REPLACE FUNCTION replace_order_items(
    p_order_id bigint,
    p_user_id bigint,
    p_product_ids bigint[],
    p_quantities integer[],
    p_max_held integer
) RETURNS TABLE (changed orders, items order_item[], refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_refusal jsonb;
    v_product bigint;
    v_held_ids bigint[];
    v_held_quantities integer[];
    v_priced record;
    v_order orders;
BEGIN
    PERFORM 1 FROM users WHERE id = p_user_id FOR NO KEY UPDATE;  -- hold limits are checked under it
    v_refusal := lock_pending_order(p_order_id, p_user_id);
    -- A payment waiting for its customer (3-D Secure) was made for these items' total:
    -- they stay as they are (cancelling and expiring, which also end that payment, may).
    IF v_refusal IS NULL
       AND EXISTS (SELECT 1 FROM payments p WHERE p.order_id = p_order_id AND p.status = 'requires_action') THEN
        v_refusal := jsonb_build_object('code', 'payment_in_flight');
    END IF;
    IF v_refusal IS NULL THEN
        v_product := held_units_over(p_user_id, p_order_id, p_product_ids, p_quantities, p_max_held);
        IF v_product IS NOT NULL THEN
            v_refusal := jsonb_build_object('code', 'too_many_held', 'product_id', v_product);
        END IF;
    END IF;
    IF v_refusal IS NULL THEN
        SELECT coalesce(array_agg(i.product_id), '{}'), coalesce(array_agg(i.quantity), '{}')
          INTO v_held_ids, v_held_quantities
          FROM order_items i WHERE i.order_id = p_order_id;
        SELECT * INTO v_priced FROM price_order_items(p_product_ids, p_quantities, v_held_ids, v_held_quantities);
        v_refusal := v_priced.refusal;
    END IF;
    IF v_refusal IS NOT NULL THEN
        RETURN QUERY SELECT NULL::orders, NULL::order_item[], v_refusal;
        RETURN;
    END IF;

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
      FROM unnest(v_priced.items) WITH ORDINALITY AS i (product_id, name, unit_price, quantity, line_total, line_no);

    UPDATE orders o SET total = v_priced.total, currency = v_priced.currency, updated_at = now()
     WHERE o.id = p_order_id
    RETURNING o.* INTO v_order;

    RETURN QUERY SELECT v_order, v_priced.items, NULL::jsonb;
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
