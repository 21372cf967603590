"""Shipping methods (the contract's "Checkout"): admins make and change them; anyone
reads the enabled ones (admins: all), answered with an ETag like the catalog."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api

METHOD_FIELDS = {
    "id", "name", "price", "currency", "countries", "free_over", "enabled", "created_at", "updated_at",
}  # fmt: skip


async def _create(api: Api, **fields: Any) -> Any:
    admin = await api.admin_user()
    return await api.call("POST", "/api/shipping-methods", json=fields, token=admin.token)


async def test_an_admin_adds_a_method_with_the_contracts_defaults(api: Api) -> None:
    reply = await _create(api, name="Standard", price=495)
    assert reply.status == 201, reply
    method = reply.json
    assert set(method) == METHOD_FIELDS
    assert (method["currency"], method["countries"], method["free_over"], method["enabled"]) == ("USD", [], None, True)
    assert reply.headers["Location"] == f"/api/shipping-methods/{method['id']}"


async def test_countries_are_alpha_2_codes_stored_upper_case_once_each(api: Api) -> None:
    reply = await _create(api, name="EU", price=0, countries=["de", "FR", "De"])
    assert reply.status == 201, reply
    assert reply.json["countries"] == ["DE", "FR"]
    for countries in (["XX"], ["DEU"], "DE", [""]):
        refused = await _create(api, name="Bad", price=0, countries=countries)
        assert refused.status == 422, (countries, refused)


@pytest.mark.parametrize(
    "fields", [{"price": -1}, {"price": 1.5}, {"free_over": -1}, {"currency": "EURO"}, {"name": " "}]
)
async def test_prices_and_names_are_validated(api: Api, fields: dict[str, Any]) -> None:
    reply = await _create(api, **{"name": "Parcel", "price": 500, **fields})
    assert reply.status == 422, reply


async def test_a_customer_may_not_add_or_change_methods(api: Api) -> None:
    customer = await api.customer()
    method = await api.shipping_method()
    body = {"name": "Mine", "price": 0}
    assert (await api.call("POST", "/api/shipping-methods", json=body, token=customer.token)).status == 403
    path = f"/api/shipping-methods/{method['id']}"
    assert (await api.call("PUT", path, json={"price": 0}, token=customer.token)).status == 403
    assert (await api.call("DELETE", path, token=customer.token)).status == 403


async def test_anyone_lists_the_enabled_methods_and_an_admin_all_of_them(api: Api) -> None:
    enabled = await api.shipping_method(name="On")
    disabled = await api.shipping_method(name="Off", enabled=False)
    customer, admin = await api.customer(), await api.admin_user()
    anonymous = await api.call("GET", "/api/shipping-methods")
    assert anonymous.status == 200
    assert [m["id"] for m in anonymous.json["items"]] == [enabled["id"]]
    as_customer = await api.call("GET", "/api/shipping-methods", token=customer.token)
    assert [m["id"] for m in as_customer.json["items"]] == [enabled["id"]]
    as_admin = await api.call("GET", "/api/shipping-methods", token=admin.token)
    assert [m["id"] for m in as_admin.json["items"]] == [enabled["id"], disabled["id"]]


async def test_methods_are_listed_oldest_first_in_pages(api: Api) -> None:
    made = [(await api.shipping_method(name=f"M{i}"))["id"] for i in range(5)]
    seen: list[int] = []
    path = "/api/shipping-methods?limit=2"
    while path:
        page = (await api.call("GET", path)).json
        seen += [m["id"] for m in page["items"]]
        path = page["next_cursor"] and f"/api/shipping-methods?limit=2&cursor={page['next_cursor']}"
    assert seen == made


async def test_a_disabled_method_is_shown_to_admins_only(api: Api) -> None:
    method = await api.shipping_method(enabled=False)
    path = f"/api/shipping-methods/{method['id']}"
    assert (await api.call("GET", path)).status == 404
    assert (await api.call("GET", path, token=(await api.customer()).token)).status == 404
    as_admin = await api.call("GET", path, token=(await api.admin_user()).token)
    assert as_admin.status == 200 and as_admin.json == method


async def test_a_read_with_a_bad_token_is_refused_not_answered_as_anonymous(api: Api) -> None:
    await api.shipping_method()
    reply = await api.call("GET", "/api/shipping-methods", token="not-a-token")
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_an_update_changes_only_the_fields_given_and_null_clears_free_over(api: Api) -> None:
    admin = await api.admin_user()
    method = await api.shipping_method(free_over=5000, countries=["DE"])
    path = f"/api/shipping-methods/{method['id']}"
    reply = await api.call("PUT", path, json={"price": 700, "countries": []}, token=admin.token)
    assert reply.status == 200, reply
    assert (reply.json["price"], reply.json["countries"], reply.json["free_over"]) == (700, [], 5000)
    cleared = await api.call("PUT", path, json={"free_over": None, "enabled": False}, token=admin.token)
    assert (cleared.json["free_over"], cleared.json["enabled"], cleared.json["name"]) == (None, False, method["name"])
    for body in ({"price": None}, {"enabled": None}, {"countries": ["XX"]}):
        assert (await api.call("PUT", path, json=body, token=admin.token)).status == 422, body


async def test_a_deleted_method_is_gone_for_everyone(api: Api) -> None:
    admin = await api.admin_user()
    method = await api.shipping_method()
    path = f"/api/shipping-methods/{method['id']}"
    assert (await api.call("DELETE", path, token=admin.token)).status == 204
    assert (await api.call("GET", path, token=admin.token)).status == 404
    assert (await api.call("PUT", path, json={"price": 1}, token=admin.token)).status == 404
    assert (await api.call("DELETE", path, token=admin.token)).status == 404
    listed = await api.call("GET", "/api/shipping-methods", token=admin.token)
    assert listed.json["items"] == []


async def test_anonymous_reads_are_cacheable_and_revalidate_with_their_etag(api: Api) -> None:
    admin = await api.admin_user()
    method = await api.shipping_method(price=500)
    one = f"/api/shipping-methods/{method['id']}"

    def listed_price(body: Any) -> int:
        return int(body["items"][0]["price"])

    def own_price(body: Any) -> int:
        return int(body["price"])

    for path, price in (("/api/shipping-methods", listed_price), (one, own_price)):
        first = await api.call("GET", path)
        assert first.headers["Cache-Control"] == "public, max-age=5"
        assert first.headers["Vary"] == "Authorization"
        etag = first.headers["ETag"]
        unchanged = await api.call("GET", path, headers={"If-None-Match": etag})
        assert (unchanged.status, unchanged.body, unchanged.headers["ETag"]) == (304, b"", etag)
        await api.call("PUT", one, json={"price": price(first.json) + 1}, token=admin.token)
        changed = await api.call("GET", path, headers={"If-None-Match": etag})
        assert changed.status == 200 and changed.headers["ETag"] != etag
        assert price(changed.json) == price(first.json) + 1


async def test_an_authenticated_read_is_not_stored_by_caches(api: Api) -> None:
    await api.shipping_method()
    reply = await api.call("GET", "/api/shipping-methods", token=(await api.customer()).token)
    assert reply.headers["Cache-Control"] == "no-store"
