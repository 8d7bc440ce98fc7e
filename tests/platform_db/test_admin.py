"""The operator's account commands (`platform-db users ...`, `platform-db sessions revoke`), run
as the installed script against services running on the same database."""

from __future__ import annotations

import json

import httpx
import pytest

from platform_auth.state import auth_state
from tests.conftest import auth_settings, running
from tests.factories import sign_up
from tests.pg import sql
from tests.platform_db.migration_helpers import run_cli
from tests.platform_db.test_session_cache import bearer
from tests.polling import poll
from trading.app import SERVICE as TRADING
from web.app import SERVICE as WEB


async def a_user_with_todos(web: httpx.AsyncClient, trading: httpx.AsyncClient, email: str) -> str:
    """Sign up through web; a todo in each service; the session token."""
    token, _ = await sign_up(web, email=email, name="Ada Admin")
    web.cookies.clear()
    for client in (web, trading):
        r = await client.post("/todos", json={"title": "mine"}, headers=bearer(token))
        assert r.status_code == 201, r.text
    return token


async def test_list_and_show_find_users_and_never_print_a_token(full_db: str) -> None:
    async with (
        running(WEB.create_app(auth_settings(full_db))) as web,
        running(TRADING.create_app(auth_settings(full_db))) as trading,
    ):
        token = await a_user_with_todos(web, trading, "ada.admin@example.com")
        await sign_up(web, email="bo@example.com", name="Bo")

    listed = await run_cli("users", "list", database_url=full_db)
    assert listed.returncode == 0, listed
    assert "ada.admin@example.com" in listed.stdout
    assert "bo@example.com" in listed.stdout
    assert "2 user(s)" in listed.stdout

    found = await run_cli("users", "list", "--search", "ADMIN", "--json", database_url=full_db)
    assert found.returncode == 0, found
    users = json.loads(found.stdout)
    assert [u["email"] for u in users] == ["ada.admin@example.com"]
    assert users[0]["live_sessions"] == 1

    # An underscore or a percent sign is a character, not a wildcard.
    none = await run_cli("users", "list", "--search", "_", "--json", database_url=full_db)
    assert json.loads(none.stdout) == []

    shown = await run_cli("users", "show", "Ada.Admin@Example.com", "--json", database_url=full_db)
    assert shown.returncode == 0, shown
    detail = json.loads(shown.stdout)
    assert detail["user"]["email"] == "ada.admin@example.com"
    assert detail["sign_in_methods"] == ["credential"]
    assert len(detail["sessions"]) == 1
    text = await run_cli("users", "show", "ada.admin@example.com", database_url=full_db)
    assert "sign-in methods: credential" in text.stdout
    (hashed,) = await sql(
        full_db, "SELECT password FROM account WHERE password IS NOT NULL LIMIT 1"
    )
    for result in (listed, found, shown, text):
        assert token not in result.stdout + result.stderr
        assert hashed["password"] not in result.stdout  # nor a password hash

    missing = await run_cli("users", "show", "nobody@example.com", database_url=full_db)
    assert missing.returncode == 1
    assert "error: no user with the email 'nobody@example.com'" in missing.stderr
    assert "Traceback" not in missing.stderr


async def test_a_revocation_is_refused_by_every_running_service_at_once(full_db: str) -> None:
    # Cached sessions live an hour: a refusal sooner than that is the NOTIFY's doing.
    web_app = WEB.create_app(auth_settings(full_db, SESSION_CACHE_TTL=3600))
    trading_app = TRADING.create_app(auth_settings(full_db, SESSION_CACHE_TTL=3600))
    async with running(web_app) as web, running(trading_app) as trading:
        for app in (web_app, trading_app):
            cache = auth_state(app).cache

            async def on(cache: object = cache) -> bool:
                return bool(getattr(cache, "enabled", False))

            await poll(on, "the session cache is on (its listener hears NOTIFY)", within=30)
        token = await a_user_with_todos(web, trading, "revoke.me@example.com")
        for client in (web, trading):  # cached in each process now
            assert (await client.get("/todos", headers=bearer(token))).status_code == 200

        result = await run_cli(
            "sessions", "revoke", "--user", "Revoke.Me@example.com", database_url=full_db
        )
        assert result.returncode == 0, result
        assert "revoked 1 session(s) of revoke.me@example.com" in result.stdout

        for client in (web, trading):

            async def refused(client: httpx.AsyncClient = client) -> bool:
                return (await client.get("/todos", headers=bearer(token))).status_code == 401

            await poll(refused, "the revoked session is refused", within=30)


async def test_delete_needs_yes_then_takes_every_services_rows(full_db: str) -> None:
    async with (
        running(WEB.create_app(auth_settings(full_db))) as web,
        running(TRADING.create_app(auth_settings(full_db))) as trading,
    ):
        await a_user_with_todos(web, trading, "gone@example.com")
        await sign_up(web, email="stays@example.com")

    refused = await run_cli("users", "delete", "gone@example.com", database_url=full_db)
    assert refused.returncode == 1
    assert "add --yes" in refused.stderr
    assert len(await sql(full_db, "SELECT 1 FROM web.todos")) == 1

    deleted = await run_cli("users", "delete", "gone@example.com", "--yes", database_url=full_db)
    assert deleted.returncode == 0, deleted
    line = deleted.stdout.strip()
    assert line.startswith("deleted gone@example.com (id "), line
    for part in ("1 from session", "1 from account", "1 from web.todos", "1 from trading.todos"):
        assert part in line, line
    assert await sql(full_db, "SELECT 1 FROM web.todos") == []
    assert await sql(full_db, "SELECT 1 FROM trading.todos") == []
    emails = {r["email"] for r in await sql(full_db, 'SELECT email FROM "user"')}
    assert emails == {"stays@example.com"}
    rows = await sql(
        full_db, 'SELECT count(*) AS n FROM session s JOIN "user" u ON u.id = s.user_id'
    )
    assert rows[0]["n"] == 1  # the other user's session is still there

    again = await run_cli("users", "delete", "gone@example.com", "--yes", database_url=full_db)
    assert again.returncode == 1
    assert "no user with the email" in again.stderr


@pytest.mark.parametrize("args", [["users"], ["users", "frobnicate"], ["sessions", "revoke"]])
async def test_incomplete_commands_are_usage_errors(args: list[str], full_db: str) -> None:
    result = await run_cli(*args, database_url=full_db)
    assert result.returncode == 2, result
    assert "usage:" in result.stderr
