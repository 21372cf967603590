-- Sessions: one row per login. Access tokens carry the session id (`sid`) and the
-- one token check joins this table in the query it already makes, so ending a
-- session (logout, a password change, a replayed refresh token) rejects its access
-- tokens at once on every process.
--
-- Tokens issued before this migration carry no `sid` and are rejected: the change
-- ships with a restart, and clients log in again once.
CREATE TABLE sessions (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The user's token_version at login: a password change (which bumps it) ends the
    -- session even where nothing revoked it explicitly.
    token_version integer     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    -- Login + REFRESH_TTL_SECONDS: no refresh extends it.
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoked_reason text       CHECK (revoked_reason IN ('logout', 'password', 'reuse'))
);

CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

-- Refresh tokens, only as SHA-256 of 256 random bits (a random secret needs no slow
-- hash). A token is spent once exchanged; a spent one stays known while its session
-- lives, so that a replay of it is recognised (and ends the session). Each links to
-- the token it replaced.
CREATE TABLE refresh_tokens (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id  bigint      NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    token_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    previous_id bigint      REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    spent_at    timestamptz
);

CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_previous_idx ON refresh_tokens (previous_id);

-- Password-reset tokens (SHA-256 of 256 random bits), one per requested email: a
-- newer request replaces the older token. A request for an email nobody has writes
-- its row too (user_id NULL, the token never leaves the service), so both cases do
-- the same database work. A token is good for the user that had this email when it
-- was requested, and only while that user still has it.
CREATE TABLE password_resets (
    email       text        PRIMARY KEY,
    user_id     bigint      REFERENCES users (id) ON DELETE CASCADE,
    token_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE INDEX password_resets_expires_idx ON password_resets (expires_at);
