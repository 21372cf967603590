-- Prepared statements run with generic plans from the first execution.
--
-- Every statement the service prepares looks rows up by key or by a small array of
-- keys; under the default plan_cache_mode PostgreSQL re-plans such statements on
-- every execution when its custom plans look cheaper (an array of one key versus
-- an unknown length), and planning the order-creation statement costs as much as
-- running it. The one place where values change the best plan, the catalog
-- search and price filters, puts those values into the statement text instead of
-- parameters (db/products.py), so each is planned for its values.
--
-- Set on the database, so it holds for every connection, through PgBouncer too.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET plan_cache_mode = force_generic_plan', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'cannot set plan_cache_mode on the database (not its owner): set it for the service''s role';
END
$$;
