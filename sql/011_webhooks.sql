-- Webhooks and their deliveries, fed from the outbox (sql/009_events.sql).
--
-- The secret is stored as it was issued: the service must sign with it, so a hash
-- would not do, and encrypting it with a key held by the same service protects
-- nothing against someone who can read both. What keeps it from being shown again
-- is that no query behind the API selects the column (db/webhooks.py); only the
-- delivery claim reads it.
CREATE TABLE webhooks (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url           text        NOT NULL,
    events        text[]      NOT NULL,
    description   text        NOT NULL DEFAULT '',
    enabled       boolean     NOT NULL DEFAULT true,
    secret        text        NOT NULL,
    -- Events that happened from this moment on are delivered: set at creation and
    -- when the webhook is enabled again, so what happened before (or while it was
    -- disabled) is never sent.
    active_since  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- How far the fan-out has read the outbox, in feed order (txid, id). One row; the
-- process that holds its lock is the one fanning out.
CREATE TABLE webhook_dispatch (
    id        int    PRIMARY KEY CHECK (id = 1),
    txid      xid8   NOT NULL,
    event_id  bigint NOT NULL
);
INSERT INTO webhook_dispatch VALUES (1, '0', 0);

-- One row per (webhook, event). Deliveries of one webhook about one resource form a
-- queue in id order (ids are given in feed order, by the one fan-out at a time):
-- only the oldest pending one of a queue may be sent.
CREATE TABLE webhook_deliveries (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id       bigint      NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    event_id         bigint      NOT NULL,
    event_type       text        NOT NULL,
    resource         text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         int         NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- Set while a process is sending it: no other process claims it before then.
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_deliveries_queue_idx ON webhook_deliveries (webhook_id, resource, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_done_idx ON webhook_deliveries (updated_at) WHERE status <> 'pending';

-- The delivery log: one row per attempt. `status` is the delivery's status after the
-- attempt ('pending': it failed and is retried at next_attempt_at).
CREATE TABLE webhook_attempts (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      bigint      NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    webhook_id       bigint      NOT NULL,
    event_id         bigint      NOT NULL,
    event_type       text        NOT NULL,
    attempt          int         NOT NULL,
    status           text        NOT NULL,
    response_status  int,
    error            text,
    next_attempt_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_attempts_log_idx ON webhook_attempts (webhook_id, id);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id);
