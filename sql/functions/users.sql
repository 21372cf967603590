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

-- A password change (a reset's or the profile's) invalidates the user's pending reset
-- tokens, and takes every token of theirs out of stored events.
CREATE OR REPLACE FUNCTION forget_password_resets(p_user_id bigint) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM password_resets r WHERE r.user_id = p_user_id;
    UPDATE events e SET data = e.data - 'token'
     WHERE e.type = 'user.password_reset_requested' AND e.data ? 'token'
       AND (e.data ->> 'user_id')::bigint = p_user_id;
$$;

-- Set the password of a reset token's user and spend the token, in one call: of two
-- confirms with one token the second finds it gone. The password change bumps
-- token_version, ends every session of the user and forgets their other resets.
-- Answers the user's id; NULL when the token is unknown, used or expired.
CREATE OR REPLACE FUNCTION confirm_password_reset(p_token_hash bytea, p_password_hash text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_user_id bigint;
BEGIN
    DELETE FROM password_resets r USING users u
     WHERE r.token_hash = p_token_hash AND r.expires_at > now() AND u.id = r.user_id AND u.email = r.email
    RETURNING r.user_id INTO v_user_id;
    IF v_user_id IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE users u SET password_hash = p_password_hash, token_version = u.token_version + 1, updated_at = now()
     WHERE u.id = v_user_id;
    UPDATE sessions s SET revoked_at = now(), revoked_reason = 'password'
     WHERE s.user_id = v_user_id AND s.revoked_at IS NULL;
    PERFORM forget_password_resets(v_user_id);
    RETURN v_user_id;
END
$$;

-- Expired reset tokens: gone from their table and from stored events (hourly).
CREATE OR REPLACE FUNCTION purge_password_resets() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_purged bigint;
BEGIN
    DELETE FROM password_resets r WHERE r.expires_at <= now();
    GET DIAGNOSTICS v_purged = ROW_COUNT;
    UPDATE events e SET data = e.data - 'token'
     WHERE e.type = 'user.password_reset_requested' AND e.data ? 'token'
       AND (e.data ->> 'expires_at')::timestamptz <= now();
    RETURN v_purged;
END
$$;

-- A profile change (name, email, password: NULL leaves it). A password change bumps
-- token_version, which revokes every access token issued before it, ends every
-- session of the user (so no refresh token outlives it either) and forgets their
-- reset tokens. No row when there is no such user; a taken email fails on the unique
-- index.
CREATE OR REPLACE FUNCTION update_profile(p_user_id bigint, p_name text, p_email text, p_password_hash text)
RETURNS SETOF users
LANGUAGE plpgsql AS $$
DECLARE
    v_user users;
BEGIN
    UPDATE users u SET
        name = coalesce(p_name, u.name),
        email = coalesce(p_email, u.email),
        password_hash = coalesce(p_password_hash, u.password_hash),
        token_version = u.token_version + CASE WHEN p_password_hash IS NULL THEN 0 ELSE 1 END,
        updated_at = now()
     WHERE u.id = p_user_id
    RETURNING u.* INTO v_user;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_password_hash IS NOT NULL THEN
        UPDATE sessions s SET revoked_at = now(), revoked_reason = 'password'
         WHERE s.user_id = p_user_id AND s.revoked_at IS NULL;
        PERFORM forget_password_resets(p_user_id);
    END IF;
    RETURN NEXT v_user;
END
$$;
