"""The web service: its migration tree, its app factory and its definition."""

from fastapi import FastAPI

from platform_auth.app import auth_service
from platform_auth.app import create_app as create_auth_app
from platform_auth.settings import ServiceSettings, load_settings
from platform_db.trees import PLATFORM
from service_kit.migrate import MigrationTree
from web.routes import router

TREE = MigrationTree(
    name="web",
    script_location="web:migrations",
    models_module="web.models",
    schema="web",
    version_table="alembic_version",
    requires=(PLATFORM,),
    create_schema=True,
)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return create_auth_app(
        title="web",
        description="The web service: todos for the web app.",
        settings=settings or load_settings(),
        routers=[router],
        trees=[TREE],
    )


SERVICE = auth_service(name="web", tree=TREE, create_app=create_app, default_port=8001)
