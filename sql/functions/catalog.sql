-- Catalog changes (the table and why: sql/014_caching.sql): every statement that changes
-- products records the ids it changed, in its transaction, and tells the writing
-- session at once.

-- Transition tables cannot serve several events in one trigger: one trigger per
-- event, one function for all.
CREATE OR REPLACE FUNCTION products_record_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
    v_count bigint;
BEGIN
    IF TG_OP <> 'TRUNCATE' THEN
        SELECT count(*), array_agg(id) INTO v_count, v_ids FROM changed_rows;
        IF v_count = 0 THEN
            RETURN NULL;  -- the statement changed no row
        END IF;
        IF v_count > 1000 THEN
            v_ids := NULL;  -- a bulk change (a seed, a price update): drop everything
        END IF;
    END IF;
    INSERT INTO catalog_changes (product_ids) VALUES (v_ids);
    IF current_setting('application_name') LIKE 'storefront%' THEN
        RAISE NOTICE 'catalog_changes:%', coalesce(array_to_string(v_ids, ','), '*');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER products_record_insert AFTER INSERT ON products
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION products_record_change();
CREATE OR REPLACE TRIGGER products_record_update AFTER UPDATE ON products
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION products_record_change();
CREATE OR REPLACE TRIGGER products_record_delete AFTER DELETE ON products
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION products_record_change();
CREATE OR REPLACE TRIGGER products_record_truncate AFTER TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION products_record_change();
