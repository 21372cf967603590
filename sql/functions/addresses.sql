-- The address book (the table: sql/026_checkout.sql).

-- A new address in a user's book, or a refusal with nothing written:
-- 'too_many_addresses' (most: the user has p_max already). Counted under the user's row
-- lock (the customer's row comes first in every lock order), so simultaneous requests
-- on any number of processes decide one after the other.
CREATE OR REPLACE FUNCTION create_address(p_user_id bigint, p_address postal_address, p_max integer)
RETURNS TABLE (created addresses, refusal jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_address addresses;
BEGIN
    PERFORM 1 FROM users WHERE id = p_user_id FOR NO KEY UPDATE;
    IF (SELECT count(*) FROM (SELECT 1 FROM addresses a WHERE a.user_id = p_user_id LIMIT p_max) AS held) >= p_max THEN
        RETURN QUERY SELECT NULL::addresses, jsonb_build_object('code', 'too_many_addresses', 'most', p_max);
        RETURN;
    END IF;
    INSERT INTO addresses (user_id, name, line1, line2, city, region, postal_code, country, phone)
    VALUES (p_user_id, (p_address).name, (p_address).line1, (p_address).line2, (p_address).city,
            (p_address).region, (p_address).postal_code, (p_address).country, (p_address).phone)
    RETURNING * INTO v_address;
    RETURN QUERY SELECT v_address, NULL::jsonb;
END
$$;
