-- Reset tokens leave stored events once used or expired (the contract's Sessions):
-- the events still holding one, found by this small index (a row leaves it when its
-- token is erased).
CREATE INDEX events_reset_tokens_idx ON events (((data ->> 'user_id')::bigint))
    WHERE type = 'user.password_reset_requested' AND data ? 'token';
