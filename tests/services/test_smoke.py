import httpx


async def test_service_todo_round_trip(service_client: httpx.AsyncClient) -> None:
    r = await service_client.post(
        "/api/auth/sign-up/email",
        json={"name": "Bo", "email": "bo@example.com", "password": "password123"},
    )
    assert r.status_code == 200
    r = await service_client.post("/todos", json={"title": "write tests"})
    assert r.status_code == 201, r.text
    r = await service_client.get("/todos")
    assert [t["title"] for t in r.json()["items"]] == ["write tests"]
