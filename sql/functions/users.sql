-- Users' writes that report events.

-- A password-reset request: the token (as its hash) stored for this email, whether or
-- not a user has it (one row per email: a newer request replaces the token), and the
-- user.password_reset_requested event for the mailer. The event is written in both
-- cases and rolled back when nobody has the email, so that both do the same work and
-- take the same time (docs/reliability.md: skipping it made them measurably apart).
CREATE OR REPLACE FUNCTION request_password_reset(
    p_email text, p_token text, p_token_hash bytea, p_ttl_seconds double precision
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_reset record;
BEGIN
    INSERT INTO password_resets AS r (email, user_id, token_hash, expires_at)
    VALUES (p_email, (SELECT u.id FROM users u WHERE u.email = p_email), p_token_hash,
            now() + make_interval(secs => p_ttl_seconds))
    ON CONFLICT (email) DO UPDATE SET
        user_id = excluded.user_id,
        token_hash = excluded.token_hash,
        created_at = now(),
        expires_at = excluded.expires_at
    RETURNING r.user_id, r.expires_at INTO v_reset;
    BEGIN
        PERFORM emit_event('user.password_reset_requested', jsonb_build_object(
            'user_id', v_reset.user_id, 'email', p_email, 'token', p_token, 'expires_at', v_reset.expires_at));
        IF v_reset.user_id IS NULL THEN
            RAISE no_data_found;
        END IF;
    EXCEPTION WHEN no_data_found THEN
        NULL;  -- nobody has this email: the event is rolled back
    END;
END
$$;
