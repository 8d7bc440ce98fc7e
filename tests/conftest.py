"""Fixtures every test shares: a real Postgres and isolated databases on it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from platform_auth.app import create_app
from platform_auth.settings import ServiceSettings
from platform_db.trees import PLATFORM
from platform_dev.embedded import FAST_SETTINGS, EmbeddedPostgres
from service_kit import migrate
from service_kit.service import ServiceDefinition
from tests.pg import create_database, drop_database
from trading.app import SERVICE as TRADING
from web.app import SERVICE as WEB

REPO = Path(__file__).resolve().parent.parent
SERVICES: tuple[ServiceDefinition, ...] = (WEB, TRADING)


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server for the whole run: `DATABASE_URL` if set, else an embedded one."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), settings=FAST_SETTINGS)
    with server:
        yield server.url()


@pytest.fixture
async def empty_db(admin_url: str) -> AsyncIterator[str]:
    """A new, empty database for one test."""
    url = await create_database(admin_url)
    yield url
    await drop_database(admin_url, url)


@pytest.fixture(scope="session")
async def platform_template(admin_url: str) -> AsyncIterator[str]:
    """A database with the platform tree at head, used as a template (never connected to)."""
    url = await create_database(admin_url, prefix="tmpl")
    await migrate.upgrade(PLATFORM, url)
    yield urlsplit(url).path.lstrip("/")
    await drop_database(admin_url, url)


@pytest.fixture(scope="session")
async def full_template(admin_url: str) -> AsyncIterator[str]:
    """A database with the platform, web and trading trees at head (a template)."""
    url = await create_database(admin_url, prefix="tmplfull")
    await migrate.upgrade(PLATFORM, url)
    for service in SERVICES:
        await migrate.upgrade(service.tree, url)
    yield urlsplit(url).path.lstrip("/")
    await drop_database(admin_url, url)


@pytest.fixture
async def full_db(admin_url: str, full_template: str) -> AsyncIterator[str]:
    """A new database with all three trees at head, for one test."""
    url = await create_database(admin_url, template=full_template)
    yield url
    await drop_database(admin_url, url)


@pytest.fixture
async def db_url(admin_url: str, platform_template: str) -> AsyncIterator[str]:
    """A new database with the platform tree at head, for one test."""
    url = await create_database(admin_url, template=platform_template)
    yield url
    await drop_database(admin_url, url)


TEST_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
ORIGIN = "https://testserver"


def auth_settings(database_url: str, **overrides: object) -> ServiceSettings:
    values: dict[str, object] = {
        "DATABASE_URL": database_url,
        "AUTH_SECRET": TEST_SECRET,
        "ENVIRONMENT": "test",
        "AUTH_URL": ORIGIN,
        "DB_POOL_SIZE": 5,
    }
    values.update(overrides)
    return ServiceSettings.from_values(values)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An async client talking to `app` in process, with its lifespan run."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url=ORIGIN, headers={"origin": ORIGIN}
        ) as client:
            yield client


@asynccontextmanager
async def app_client(db_url: str, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client for an app with only the platform's routes, with these settings."""
    app = create_app(title="platform test", settings=auth_settings(db_url, **overrides))
    async with running(app) as client:
        yield client


@pytest.fixture
async def platform_client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client for an app with only the platform's routes (auth, health)."""
    app = create_app(title="platform test", settings=auth_settings(db_url))
    async with running(app) as client:
        yield client


@pytest.fixture(params=SERVICES, ids=lambda s: s.name)
def service(request: pytest.FixtureRequest) -> ServiceDefinition:
    """Each test using this runs once per service."""
    svc: ServiceDefinition = request.param
    return svc


@pytest.fixture
async def service_client(
    service: ServiceDefinition, full_db: str
) -> AsyncIterator[httpx.AsyncClient]:
    """A client for one service's app (in process) on a database with every tree at head."""
    async with running(service.create_app(auth_settings(full_db))) as client:
        yield client


@pytest.fixture
async def both_clients(
    full_db: str,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """In-process clients for web and trading on one shared database."""
    async with (
        running(WEB.create_app(auth_settings(full_db))) as web,
        running(TRADING.create_app(auth_settings(full_db))) as trading,
    ):
        yield web, trading
