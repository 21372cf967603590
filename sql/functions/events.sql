-- Writing an event: the one way, for every write path (the table and the feed's
-- order: sql/009_events.sql).
--
-- An event is written by the statement or function that makes the change it reports,
-- in its transaction, so a rolled-back change reports nothing and a committed one is
-- never lost. Its data is the changed resource as its row (to_jsonb of the row, an
-- order with its items): the API's shape of it (server/domain/shapes.py) is applied
-- when the event is read, by the feed and by webhook deliveries, with the same
-- declaration the API's answers use. So no JSON shape is declared in SQL, and writing
-- an event costs one row-to-jsonb conversion.
--
-- The service's own sessions (application_name storefront...) are told at once, by a
-- NOTICE, so that the writing process wakes its webhook deliverer as soon as the
-- transaction is over, without waiting for its poll (server/domain/webhooks.py,
-- EventCommits). Not pg_notify: a notifying transaction serializes every commit
-- (sql/014_caching.sql). Told once a transaction, however many events it writes (a
-- settled payment writes two, a batch of orders one an order): the notice only says
-- that it wrote some, and each costs both sides a message. The mark is transaction-local
-- (set_config's is_local), so a rolled-back savepoint takes it back with its events.
CREATE OR REPLACE FUNCTION emit_event(p_type text, p_data jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, data) VALUES (p_type, p_data);
    IF current_setting('application_name') LIKE 'storefront%'
       AND current_setting('storefront.events_told', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('storefront.events_told', 'yes', true);
        RAISE NOTICE 'events:written';
    END IF;
END
$$;
