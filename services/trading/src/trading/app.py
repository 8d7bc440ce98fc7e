"""The trading service: the app factory, its migration tree and its definition."""

from fastapi import FastAPI

from platform_db.app import create_app as create_service_app
from platform_db.migrate import MigrationTree
from platform_db.service import ServiceDefinition, load_settings
from platform_db.settings import AuthSettings
from platform_db.trees import PLATFORM
from trading.routes import router

TREE = MigrationTree(
    name="trading",
    script_location="trading:migrations",
    models_module="trading.models",
    schema="trading",
    version_table="alembic_version",
    requires=(PLATFORM,),
    create_schema=True,
)


def create_app(settings: AuthSettings | None = None) -> FastAPI:
    return create_service_app(
        title="trading",
        description="The trading service: todos for the trading desk.",
        settings=settings or load_settings(),
        routers=[router],
        trees=[TREE],
    )


SERVICE = ServiceDefinition(name="trading", tree=TREE, create_app=create_app, default_port=8002)
