-- The outbox: one row per event, written in the same transaction as the change it
-- reports, so a rolled-back change emits nothing and a committed one is never lost.
--
-- Feed order is (txid, id), not id alone: ids come from a sequence and transactions
-- commit out of id order, so a reader asking for "id > last seen" would skip an event
-- whose transaction commits late. A reader shows only events whose transaction is
-- older than every transaction still in flight (txid < pg_snapshot_xmin of its
-- snapshot); any event that becomes visible later has a txid at least that xmin, so
-- it sorts after everything already shown.
CREATE TABLE events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_feed_idx ON events (txid, id);
