async def test_smoke(api):
    user = await api.customer()
    r = await api.call("GET", "/api/users/profile", token=user.token)
    assert r.status == 200, r
    p = await api.product(stock=5)
    await api.product()
    o = await api.order(user, (p["id"], 2))
    assert o.status == 201, o
    assert await api.stock(p["id"]) == 3
    pay = await api.pay(user, o.json["id"])
    assert pay.status == 201, pay
    g = await api.call("GET", f"/api/orders/{o.json['id']}", token=user.token)
    assert g.json["status"] == "paid", g
    l = await api.call("GET", "/api/products?limit=1")
    assert l.status == 200, l
    assert l.json["next_cursor"]
    l2 = await api.call("GET", "/api/products?limit=1&cursor=" + l.json["next_cursor"])
    assert l2.status == 200, l2
    d = await api.call("GET", "/api/openapi.json")
    assert d.status == 200
    m = await api.call("GET", "/metrics")
    assert m.status == 200, m
