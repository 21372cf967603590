-- The catalog's changes, each one call that writes its event (product.created,
-- product.updated, product.deleted) with the product as changed. A duplicate live sku
-- fails on the unique index (products_sku_live_key), whichever process tries.

CREATE OR REPLACE FUNCTION create_product(
    p_name text, p_description text, p_price bigint, p_currency text, p_stock integer, p_sku text
) RETURNS SETOF products
LANGUAGE plpgsql AS $$
DECLARE
    v_product products;
BEGIN
    INSERT INTO products (name, description, price, currency, stock, stock_received, sku)
    VALUES (p_name, p_description, p_price, p_currency, p_stock, p_stock, p_sku)
    RETURNING * INTO v_product;
    PERFORM emit_event('product.created', to_jsonb(v_product));
    RETURN NEXT v_product;
END
$$;

-- Change the fields named in p_set (the others' arguments are ignored) of a live
-- product; no row when there is none. A change of stock also counts as stock received
-- (or removed), which keeps the stock invariant true across restocking.
CREATE OR REPLACE FUNCTION update_product(
    p_id bigint, p_set text[],
    p_name text, p_description text, p_price bigint, p_currency text, p_stock integer, p_sku text
) RETURNS SETOF products
LANGUAGE plpgsql AS $$
DECLARE
    v_product products;
BEGIN
    UPDATE products p SET
        name = CASE WHEN 'name' = ANY (p_set) THEN p_name ELSE p.name END,
        description = CASE WHEN 'description' = ANY (p_set) THEN p_description ELSE p.description END,
        price = CASE WHEN 'price' = ANY (p_set) THEN p_price ELSE p.price END,
        currency = CASE WHEN 'currency' = ANY (p_set) THEN p_currency ELSE p.currency END,
        stock_received = CASE WHEN 'stock' = ANY (p_set) THEN p.stock_received + (p_stock - p.stock)
                              ELSE p.stock_received END,
        stock = CASE WHEN 'stock' = ANY (p_set) THEN p_stock ELSE p.stock END,
        sku = CASE WHEN 'sku' = ANY (p_set) THEN p_sku ELSE p.sku END,
        updated_at = now()
     WHERE p.id = p_id AND p.deleted_at IS NULL
    RETURNING p.* INTO v_product;
    IF FOUND THEN
        PERFORM emit_event('product.updated', to_jsonb(v_product));
        RETURN NEXT v_product;
    END IF;
END
$$;

-- Remove a live product from the catalog (the row stays: order items point at it).
CREATE OR REPLACE FUNCTION delete_product(p_id bigint) RETURNS SETOF products
LANGUAGE plpgsql AS $$
DECLARE
    v_product products;
BEGIN
    UPDATE products p SET deleted_at = now(), updated_at = now()
     WHERE p.id = p_id AND p.deleted_at IS NULL
    RETURNING p.* INTO v_product;
    IF FOUND THEN
        PERFORM emit_event('product.deleted', to_jsonb(v_product));
        RETURN NEXT v_product;
    END IF;
END
$$;
