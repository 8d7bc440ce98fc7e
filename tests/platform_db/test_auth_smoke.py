import httpx


async def test_sign_up_then_get_session(platform_client: httpx.AsyncClient) -> None:
    r = await platform_client.post(
        "/api/auth/sign-up/email",
        json={"name": "Ada", "email": "Ada@Example.com", "password": "correct horse"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["emailVerified"] is False
    token = body["token"]
    r = await platform_client.get("/api/auth/get-session")  # cookie set by sign-up
    assert r.status_code == 200
    assert r.json()["session"]["token"] == token
    r = await platform_client.get(
        "/api/auth/get-session", headers={"authorization": f"Bearer {token}"}, cookies={}
    )
    assert r.json()["user"]["name"] == "Ada"
    r = await platform_client.post("/api/auth/sign-out")
    assert r.json() == {"success": True}
    r = await platform_client.get(
        "/api/auth/get-session", headers={"authorization": f"Bearer {token}"}
    )
    assert r.json() is None
