-- What pending orders hold, kept as counters beside the orders: the hoarding limits
-- (ORDER_MAX_PENDING_PER_USER, ORDER_MAX_HELD_UNITS_PER_PRODUCT[_PER_IP]) read one
-- row per product instead of adding up every pending order of a customer or of a
-- client address, which grew with the orders and was most of an order's cost under
-- load. Moved by the functions that start and end pending orders or change their
-- items (move_holds, orders.sql), each transaction moving them once, last; only
-- non-zero counts are kept. check-invariants recounts them from the orders. (No CHECK
-- of the sign: a decrement is an upsert of a negative amount, and PostgreSQL checks
-- the row it proposes to insert before finding the conflict.)
CREATE TABLE customer_pending_orders (
    user_id bigint PRIMARY KEY,
    orders integer NOT NULL
);
CREATE TABLE customer_holds (
    user_id bigint NOT NULL,
    product_id bigint NOT NULL,
    units integer NOT NULL,
    PRIMARY KEY (user_id, product_id)
);
CREATE TABLE address_holds (
    client_ip text NOT NULL,
    product_id bigint NOT NULL,
    units integer NOT NULL,
    PRIMARY KEY (client_ip, product_id)
);

-- Counted with the orders held still: an order placed, paid or ended by a process
-- still running the old functions while this counts would be missed for good.
LOCK TABLE orders, order_items IN SHARE MODE;
INSERT INTO customer_pending_orders (user_id, orders)
SELECT o.user_id, count(*) FROM orders o
 WHERE o.status = 'pending' AND o.deleted_at IS NULL
 GROUP BY o.user_id;
INSERT INTO customer_holds (user_id, product_id, units)
SELECT o.user_id, i.product_id, sum(i.quantity) FROM orders o JOIN order_items i ON i.order_id = o.id
 WHERE o.status = 'pending' AND o.deleted_at IS NULL
 GROUP BY o.user_id, i.product_id;
INSERT INTO address_holds (client_ip, product_id, units)
SELECT o.client_ip, i.product_id, sum(i.quantity) FROM orders o JOIN order_items i ON i.order_id = o.id
 WHERE o.status = 'pending' AND o.deleted_at IS NULL AND o.client_ip IS NOT NULL
 GROUP BY o.client_ip, i.product_id;

-- The hoarding checks no longer look pending orders up by customer or by address.
DROP INDEX orders_user_pending_idx;
DROP INDEX orders_pending_client_ip_idx;
