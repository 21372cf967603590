-- Many accounts, one client (the contract's Abuse limits): the hoarding and
-- card-testing limits hold per client address too, so fresh accounts do not multiply
-- them. An order and a payment remember the address they were made from.
ALTER TABLE orders ADD COLUMN client_ip text;
ALTER TABLE payments ADD COLUMN client_ip text;
-- The pending orders of one address (ORDER_MAX_HELD_UNITS_PER_PRODUCT_PER_IP), and its
-- recent unsettled or failed payments (PAYMENT_MAX_DECLINES_PER_IP).
CREATE INDEX orders_pending_client_ip_idx ON orders (client_ip) WHERE status = 'pending' AND client_ip IS NOT NULL;
CREATE INDEX payments_client_ip_idx ON payments (client_ip, created_at)
    WHERE status <> 'succeeded' AND client_ip IS NOT NULL;
