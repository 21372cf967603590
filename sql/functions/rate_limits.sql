-- Attempt counters for throttled keys (the table: sql/013_abuse_limits.sql).

-- One attempt, counted on every key or on none: each key's row is locked (in key
-- order, so concurrent calls never deadlock) and judged first, and the attempt is
-- counted only when every key admits it, so requests a key refuses cannot use up the
-- other keys (a stranger refused by the email-and-address pair must not exhaust the
-- email's own ceiling). A key admits p_max attempts per window; past them a plain key
-- refuses until the window ends, a growing key admits one attempt per delay, the
-- delay doubling from p_base_delay seconds (at most the window).
-- retry_after: seconds until the key admits again (0 when it admits).
CREATE OR REPLACE FUNCTION rate_limit_hit(
    p_keys text[],
    p_max integer[],
    p_window double precision[],
    p_growing boolean[],
    p_base_delay double precision[]
) RETURNS TABLE (key text, admitted boolean, retry_after integer)
LANGUAGE plpgsql AS $$
DECLARE
    k record;
    r rate_limits;
    v_ok boolean;
    v_all boolean := true;
BEGIN
    -- First pass: lock, open a new window where the old one ended, judge each key.
    FOR k IN SELECT * FROM unnest(p_keys, p_max, p_window, p_growing, p_base_delay)
                          AS u (key, max_attempts, window_seconds, growing, base_delay)
             ORDER BY u.key
    LOOP
        INSERT INTO rate_limits AS t VALUES (k.key, 0, now(), now()) ON CONFLICT DO NOTHING;
        SELECT * INTO r FROM rate_limits t WHERE t.key = k.key FOR UPDATE;
        IF r.window_start <= now() - make_interval(secs => k.window_seconds) THEN
            UPDATE rate_limits t SET attempts = 0, window_start = now(), not_before = now() WHERE t.key = k.key;
            r.attempts := 0;
            r.not_before := now();
        END IF;
        v_ok := CASE WHEN k.growing THEN r.not_before <= now() ELSE r.attempts < k.max_attempts END;
        v_all := v_all AND v_ok;
    END LOOP;
    -- Second pass: count the attempt on every key when all admitted it; answer.
    FOR k IN SELECT * FROM unnest(p_keys, p_max, p_window, p_growing, p_base_delay)
                          AS u (key, max_attempts, window_seconds, growing, base_delay)
             ORDER BY u.key
    LOOP
        SELECT * INTO r FROM rate_limits t WHERE t.key = k.key;
        v_ok := CASE WHEN k.growing THEN r.not_before <= now() ELSE r.attempts < k.max_attempts END;
        IF v_all THEN
            r.attempts := r.attempts + 1;
            IF k.growing AND r.attempts >= k.max_attempts THEN
                r.not_before := now() + make_interval(secs => least(
                    k.window_seconds, k.base_delay * power(2, r.attempts - k.max_attempts)));
            END IF;
            UPDATE rate_limits t SET attempts = r.attempts, not_before = r.not_before WHERE t.key = k.key;
        END IF;
        key := k.key;
        admitted := v_ok;
        retry_after := CASE
            WHEN v_ok THEN 0
            WHEN k.growing THEN ceil(extract(epoch FROM r.not_before - now()))
            ELSE ceil(extract(epoch FROM r.window_start + make_interval(secs => k.window_seconds) - now()))
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Take back one attempt of each key (it turned out not to be a failure), and forget
-- p_forget (a successful login clears its email-and-address pair).
CREATE OR REPLACE FUNCTION rate_limit_undo(p_keys text[], p_forget text) RETURNS void
LANGUAGE sql AS $$
    UPDATE rate_limits SET attempts = greatest(attempts - 1, 0) WHERE key = ANY (p_keys);
    DELETE FROM rate_limits WHERE key = p_forget;
$$;
