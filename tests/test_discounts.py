"""Discount codes as the admin sees them (the contract's "Checkout"): create, read,
list, change, delete. What orders do with them: tests/test_checkout.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api

DISCOUNT_FIELDS = {
    "id", "code", "kind", "value", "currency", "min_subtotal", "starts_at", "ends_at", "max_redemptions",
    "max_per_customer", "times_redeemed", "enabled", "created_at", "updated_at",
}  # fmt: skip


async def _create(api: Api, **fields: Any) -> Any:
    admin = await api.admin_user()
    body = {"code": "WINTER10", "kind": "percent", "value": 10, **fields}
    return await api.call("POST", "/api/discounts", json=body, token=admin.token)


async def test_an_admin_adds_a_code_with_the_contracts_defaults(api: Api) -> None:
    reply = await _create(api, code="winter-10_a")
    assert reply.status == 201, reply
    discount = reply.json
    assert set(discount) == DISCOUNT_FIELDS
    assert discount["code"] == "WINTER-10_A"
    assert (discount["currency"], discount["min_subtotal"], discount["times_redeemed"], discount["enabled"]) == (
        "USD", 0, 0, True,
    )  # fmt: skip
    assert [discount[k] for k in ("starts_at", "ends_at", "max_redemptions", "max_per_customer")] == [None] * 4
    assert reply.headers["Location"] == f"/api/discounts/{discount['id']}"
    again = await api.call("GET", reply.headers["Location"], token=(await api.admin_user()).token)
    assert again.json == discount


async def test_every_field_is_stored_as_given(api: Api) -> None:
    fields = {
        "code": "FIXED5", "kind": "fixed", "value": 500, "currency": "EUR", "min_subtotal": 2000,
        "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2027-01-01T00:00:00+01:00", "max_redemptions": 100,
        "max_per_customer": 2, "enabled": False,
    }  # fmt: skip
    reply = await _create(api, **fields)
    assert reply.status == 201, reply
    stored = reply.json
    assert {k: stored[k] for k in ("code", "kind", "value", "currency", "min_subtotal", "enabled")} == {
        k: fields[k] for k in ("code", "kind", "value", "currency", "min_subtotal", "enabled")
    }
    assert (stored["starts_at"], stored["ends_at"]) == ("2026-01-01T00:00:00Z", "2026-12-31T23:00:00Z")
    assert (stored["max_redemptions"], stored["max_per_customer"]) == (100, 2)


async def test_the_first_and_last_instants_postgresql_holds_are_answered_in_utc(api: Api) -> None:
    # asyncpg reads these two as naive datetimes (its sentinels for -infinity and
    # infinity): answered without their Z, they would not be RFC 3339.
    window = {"starts_at": "0001-01-01T00:00:00Z", "ends_at": "9999-12-31T23:59:59.999999Z"}
    reply = await _create(api, **window)
    assert reply.status == 201, reply
    admin = await api.admin_user()
    again = await api.call("GET", reply.headers["Location"], token=admin.token)
    for answered in (reply.json, again.json):
        assert (answered["starts_at"], answered["ends_at"]) == (window["starts_at"], window["ends_at"])


@pytest.mark.parametrize("code", ["AB", "A" * 33, "WITH SPACE", "ÜBER10", "a.b.c", ""])
async def test_a_code_is_3_to_32_of_letters_digits_underscore_and_hyphen(api: Api, code: str) -> None:
    reply = await _create(api, code=code)
    assert reply.status == 422, reply
    assert [e["field"] for e in reply.json["errors"]] == ["code"]


async def test_codes_are_unique_whatever_their_case(api: Api) -> None:
    assert (await _create(api, code="SPRING")).status == 201
    duplicate = await _create(api, code="spring")
    assert duplicate.status == 409, duplicate


@pytest.mark.parametrize(("kind", "value"), [("percent", 0), ("percent", 101), ("fixed", 0), ("fixed", -5)])
async def test_a_value_outside_its_kinds_range_is_refused(api: Api, kind: str, value: int) -> None:
    reply = await _create(api, kind=kind, value=value)
    assert reply.status == 422, reply
    assert [e["field"] for e in reply.json["errors"]] == ["value"]


async def test_percent_takes_1_to_100_and_fixed_any_positive_amount(api: Api) -> None:
    assert (await _create(api, code="ALL", kind="percent", value=100)).status == 201
    assert (await _create(api, code="ONE", kind="percent", value=1)).status == 201
    assert (await _create(api, code="BIG", kind="fixed", value=10**9)).status == 201


async def test_the_window_must_end_after_it_starts(api: Api) -> None:
    reply = await _create(api, starts_at="2026-06-01T00:00:00Z", ends_at="2026-06-01T00:00:00Z")
    assert reply.status == 422, reply
    assert [e["field"] for e in reply.json["errors"]] == ["ends_at"]


@pytest.mark.parametrize(
    "value", ["2026-06-01", "2026-06-01T00:00:00", "yesterday", 1767225600, "2026-13-01T00:00:00Z"]
)
async def test_timestamps_are_rfc_3339_with_an_offset(api: Api, value: Any) -> None:
    reply = await _create(api, starts_at=value)
    assert reply.status == 422, reply


@pytest.mark.parametrize("fields", [{"max_redemptions": -1}, {"max_per_customer": 0}, {"min_subtotal": -1}])
async def test_limits_are_counts(api: Api, fields: dict[str, Any]) -> None:
    assert (await _create(api, **fields)).status == 422


async def test_a_customer_may_not_see_or_manage_codes(api: Api) -> None:
    customer = await api.customer()
    discount = await api.discount()
    assert (await api.call("GET", "/api/discounts", token=customer.token)).status == 403
    assert (await api.call("GET", f"/api/discounts/{discount['id']}", token=customer.token)).status == 403
    body = {"code": "MINE", "kind": "percent", "value": 100}
    assert (await api.call("POST", "/api/discounts", json=body, token=customer.token)).status == 403


async def test_codes_are_listed_oldest_first_in_pages(api: Api) -> None:
    admin = await api.admin_user()
    made = [(await api.discount())["id"] for _ in range(5)]
    seen: list[int] = []
    path = "/api/discounts?limit=2"
    while path:
        page = (await api.call("GET", path, token=admin.token)).json
        seen += [d["id"] for d in page["items"]]
        path = page["next_cursor"] and f"/api/discounts?limit=2&cursor={page['next_cursor']}"
    assert seen == made


async def test_an_update_changes_only_the_fields_given_and_null_clears_the_optional_ones(api: Api) -> None:
    admin = await api.admin_user()
    discount = await api.discount(max_redemptions=10, ends_at="2030-01-01T00:00:00Z")
    path = f"/api/discounts/{discount['id']}"
    reply = await api.call("PUT", path, json={"value": 25, "max_redemptions": None, "ends_at": None}, token=admin.token)
    assert reply.status == 200, reply
    changed = reply.json
    assert (changed["value"], changed["max_redemptions"], changed["ends_at"], changed["code"]) == (
        25, None, None, discount["code"],
    )  # fmt: skip


async def test_the_code_itself_cannot_be_changed(api: Api) -> None:
    admin = await api.admin_user()
    discount = await api.discount()
    reply = await api.call("PUT", f"/api/discounts/{discount['id']}", json={"code": "OTHER"}, token=admin.token)
    assert reply.status == 422, reply


async def test_an_update_is_checked_against_the_stored_kind(api: Api) -> None:
    admin = await api.admin_user()
    discount = await api.discount(kind="fixed", value=5000)
    path = f"/api/discounts/{discount['id']}"
    refused = await api.call("PUT", path, json={"kind": "percent"}, token=admin.token)
    assert refused.status == 422, refused
    assert [e["field"] for e in refused.json["errors"]] == ["value"]
    assert (await api.call("PUT", path, json={"kind": "percent", "value": 50}, token=admin.token)).status == 200


async def test_a_deleted_code_is_gone_and_its_code_may_be_given_again(api: Api) -> None:
    admin = await api.admin_user()
    discount = await api.discount(code="REUSE")
    path = f"/api/discounts/{discount['id']}"
    assert (await api.call("DELETE", path, token=admin.token)).status == 204
    assert (await api.call("GET", path, token=admin.token)).status == 404
    assert (await api.call("DELETE", path, token=admin.token)).status == 404
    assert (await api.call("PUT", path, json={"value": 5}, token=admin.token)).status == 404
    assert (await _create(api, code="reuse")).status == 201
