-- Users and their credentials. Emails are stored trimmed and lower-cased by the
-- service, so a plain unique index decides duplicates.
CREATE TABLE users (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           text        NOT NULL CHECK (email = lower(email) AND char_length(email) <= 320),
    name            text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    role            text        NOT NULL DEFAULT 'customer' CHECK (role IN ('customer', 'admin')),
    password_hash   text        NOT NULL,
    -- Bumped on every password change; access tokens carry the version they were
    -- issued for, so older tokens stop working at once.
    token_version   integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_email_key ON users (email);

-- Failed-login counters, one row per throttled key ("email:<addr>" or "ip:<addr>"),
-- shared by every process so that throttling holds behind a load balancer.
CREATE UNLOGGED TABLE login_failures (
    key           text        PRIMARY KEY,
    failures      integer     NOT NULL,
    window_start  timestamptz NOT NULL
);
