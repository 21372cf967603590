"""The address book (the contract's "Checkout"): the caller's own addresses, validated,
at most 20, oldest first; another user's is not found."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

from tests.helpers import ADDRESS, Api, User

ADDRESS_FIELDS = {
    "id", "name", "line1", "line2", "city", "region", "postal_code", "country", "phone", "created_at", "updated_at",
}  # fmt: skip


async def _create(api: Api, user: User, **fields: Any) -> Any:
    return await api.call("POST", "/api/users/addresses", json={**ADDRESS, **fields}, token=user.token)


async def test_an_address_is_created_with_its_defaults_and_read_back(api: Api) -> None:
    user = await api.customer()
    reply = await _create(api, user)
    assert reply.status == 201, reply
    address = reply.json
    assert set(address) == ADDRESS_FIELDS
    assert {k: address[k] for k in ADDRESS} == ADDRESS
    assert (address["line2"], address["region"], address["phone"]) == ("", "", "")
    assert reply.headers["Location"] == f"/api/users/addresses/{address['id']}"
    again = await api.call("GET", reply.headers["Location"], token=user.token)
    assert again.status == 200 and again.json == address


async def test_the_country_is_taken_in_any_case_and_stored_upper_case(api: Api) -> None:
    user = await api.customer()
    for given in ("fr", "Fr", "FR"):
        reply = await _create(api, user, country=given)
        assert reply.status == 201, reply
        assert reply.json["country"] == "FR"


@pytest.mark.parametrize("country", ["XX", "USA", "U", "", "ÄÖ", "u1", 49])
async def test_a_country_that_is_no_iso_3166_alpha_2_code_is_refused(api: Api, country: Any) -> None:
    user = await api.customer()
    reply = await _create(api, user, country=country)
    assert reply.status == 422, reply
    assert [e["field"] for e in reply.json["errors"]] == ["country"]


@pytest.mark.parametrize(
    ("field", "longest"),
    [("name", 200), ("line1", 200), ("line2", 200), ("city", 100), ("region", 100), ("postal_code", 20), ("phone", 32)],
)
async def test_each_field_takes_the_contracts_length_and_no_more(api: Api, field: str, longest: int) -> None:
    user = await api.customer()
    accepted = await _create(api, user, **{field: "x" * longest})
    assert accepted.status == 201, accepted
    assert accepted.json[field] == "x" * longest
    refused = await _create(api, user, **{field: "x" * (longest + 1)})
    assert refused.status == 422, refused
    assert [e["field"] for e in refused.json["errors"]] == [field]


@pytest.mark.parametrize("field", ["name", "line1", "city", "postal_code"])
async def test_a_required_field_may_not_be_blank_or_missing(api: Api, field: str) -> None:
    user = await api.customer()
    assert (await _create(api, user, **{field: "   "})).status == 422
    body = {k: v for k, v in ADDRESS.items() if k != field}
    missing = await api.call("POST", "/api/users/addresses", json=body, token=user.token)
    assert missing.status == 422, missing


async def test_text_is_trimmed(api: Api) -> None:
    user = await api.customer()
    reply = await _create(api, user, name="  Erika  ", line2="\tHinterhaus ")
    assert (reply.json["name"], reply.json["line2"]) == ("Erika", "Hinterhaus")


async def test_a_user_keeps_at_most_20_addresses(api: Api) -> None:
    user = await api.customer()
    made = [await api.address(user, name=f"A{i}") for i in range(20)]
    refused = await _create(api, user)
    assert refused.status == 409, refused
    assert "20" in refused.json["detail"]
    await api.call("DELETE", f"/api/users/addresses/{made[0]['id']}", token=user.token)
    assert (await _create(api, user)).status == 201


async def test_simultaneous_creations_never_pass_20_addresses(api: Api) -> None:
    user = await api.customer()
    statuses = collections.Counter(
        reply.status for reply in await asyncio.gather(*(_create(api, user, name=f"A{i}") for i in range(30)))
    )
    assert statuses == {201: 20, 409: 10}


async def test_the_limit_is_per_user(api: Api) -> None:
    first, second = await api.customer(), await api.customer()
    for i in range(20):
        await api.address(first, name=f"A{i}")
    assert (await _create(api, second)).status == 201


async def test_addresses_are_listed_oldest_first_in_pages(api: Api) -> None:
    user = await api.customer()
    made = [(await api.address(user, name=f"A{i}"))["id"] for i in range(5)]
    seen: list[int] = []
    path = "/api/users/addresses?limit=2"
    while True:
        page = (await api.call("GET", path, token=user.token)).json
        seen += [a["id"] for a in page["items"]]
        if page["next_cursor"] is None:
            break
        path = f"/api/users/addresses?limit=2&cursor={page['next_cursor']}"
    assert seen == made


async def test_the_list_shows_only_the_callers_addresses(api: Api) -> None:
    owner, other = await api.customer(), await api.customer()
    mine = await api.address(owner)
    await api.address(other)
    page = (await api.call("GET", "/api/users/addresses", token=owner.token)).json
    assert [a["id"] for a in page["items"]] == [mine["id"]]


@pytest.mark.parametrize(("method", "body"), [("GET", None), ("PUT", {"city": "Bonn"}), ("DELETE", None)])
async def test_another_users_address_is_not_found(api: Api, method: str, body: Any) -> None:
    owner, other = await api.customer(), await api.customer()
    address = await api.address(owner)
    reply = await api.call(method, f"/api/users/addresses/{address['id']}", json=body, token=other.token)
    assert reply.status == 404, reply
    assert (await api.call("GET", f"/api/users/addresses/{address['id']}", token=owner.token)).json == address


async def test_an_admin_does_not_see_a_customers_address_either(api: Api) -> None:
    owner, admin = await api.customer(), await api.admin_user()
    address = await api.address(owner)
    assert (await api.call("GET", f"/api/users/addresses/{address['id']}", token=admin.token)).status == 404


async def test_an_update_changes_only_the_fields_given(api: Api) -> None:
    user = await api.customer()
    address = await api.address(user)
    reply = await api.call(
        "PUT", f"/api/users/addresses/{address['id']}", json={"city": "Bonn", "country": "at"}, token=user.token
    )
    assert reply.status == 200, reply
    changed = reply.json
    assert (changed["city"], changed["country"], changed["line1"]) == ("Bonn", "AT", address["line1"])
    assert changed["updated_at"] > address["updated_at"]


async def test_an_update_is_validated_like_a_creation(api: Api) -> None:
    user = await api.customer()
    address = await api.address(user)
    for body in ({"country": "XX"}, {"name": ""}, {"phone": "1" * 33}, {"name": None}, {"nickname": "x"}):
        reply = await api.call("PUT", f"/api/users/addresses/{address['id']}", json=body, token=user.token)
        assert reply.status == 422, (body, reply)


async def test_a_deleted_address_is_gone(api: Api) -> None:
    user = await api.customer()
    address = await api.address(user)
    path = f"/api/users/addresses/{address['id']}"
    assert (await api.call("DELETE", path, token=user.token)).status == 204
    assert (await api.call("GET", path, token=user.token)).status == 404
    assert (await api.call("DELETE", path, token=user.token)).status == 404
