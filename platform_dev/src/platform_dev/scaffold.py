"""`platform-db new-service NAME`: a new service in the workspace, the way web and trading are.

It writes `services/NAME/` (its own Postgres schema, an `items` table referencing
`user.id`, CRUD routes scoped to the signed-in user, its migration tree with no migration
yet, its command) and adds the package to the workspace's `pyproject.toml`. Then `uv sync`,
`NAME revision -m "create items"`, `NAME migrate`: see the README's "Adding a service".
"""

from __future__ import annotations

import argparse
import keyword
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

from service_kit.cli import subcommands
from service_kit.migrate import MigrationError

_NAME = re.compile(r"^[a-z][a-z0-9_]{1,30}$")
# Names already taken: the packages of the workspace and the Postgres schemas in use.
_TAKEN = frozenset(
    {"service_kit", "platform_db", "platform_auth", "platform_dev", "public", "tests", "bench"}
)

PYPROJECT = """[project]
name = "{name}-service"
version = "0.1.0"
description = "The {name} service, on the shared platform_db login."
requires-python = ">=3.11"
dependencies = ["service-kit", "platform-db", "platform-auth"]

[project.scripts]
{name} = "{name}.cli:main"

[project.entry-points."platform_db.services"]
{name} = "{name}.app:SERVICE"

[tool.uv.sources]
service-kit = {{ workspace = true }}
platform-db = {{ workspace = true }}
platform-auth = {{ workspace = true }}

[build-system]
requires = ["uv_build>=0.9,<0.14"]
build-backend = "uv_build"

[tool.uv.build-backend]
module-name = "{name}"
"""

MODELS = '''"""The {name} service's tables, in its own Postgres schema `{name}`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, Text, text
from sqlmodel import Field, SQLModel

from platform_db.models import User
from service_kit.metadata import metadata
from service_kit.types import UTCDateTime, utcnow

SCHEMA = "{name}"
NAME_MAX = 200


class Item(SQLModel, table=True):
    __tablename__ = "items"
    __table_args__ = (
        # "My items, newest first" (and the keyset cursor), by a backward index scan.
        Index(None, "user_id", "created_at", "id"),
        CheckConstraint(f"char_length(name) BETWEEN 1 AND {{NAME_MAX}}", name="name_length"),
        {{"schema": SCHEMA}},
    )

    id: str = Field(primary_key=True, sa_type=Text)
    user_id: str = Field(
        foreign_key=f"{{User.__tablename__}}.id", ondelete="CASCADE", nullable=False, sa_type=Text
    )
    name: str = Field(nullable=False, sa_type=Text)
    created_at: datetime = Field(
        default_factory=utcnow,
        nullable=False,
        sa_type=UTCDateTime,
        sa_column_kwargs={{"server_default": text("now()")}},
    )
    updated_at: datetime = Field(
        default_factory=utcnow,
        nullable=False,
        sa_type=UTCDateTime,
        sa_column_kwargs={{"server_default": text("now()")}},
    )


__all__ = ["SCHEMA", "Item", "metadata"]
'''

SCHEMAS = '''"""The {name} service's wire types: ItemCreate, ItemUpdate (all optional), ItemRead."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from {name}.models import NAME_MAX
from service_kit.schemas import ApiModel, InputModel, PatchModel, Timestamp

# Postgres text cannot hold NUL: refuse it as a validation error, not a database error.
_NO_NUL = r"^[^\\x00]*$"
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX, pattern=_NO_NUL),
]


class ItemCreate(InputModel):
    name: Name


class ItemUpdate(PatchModel):
    not_null = ("name",)

    name: Name | None = None


class ItemRead(ApiModel):
    id: str
    user_id: str
    name: str
    created_at: Timestamp
    updated_at: Timestamp


class ItemPage(ApiModel):
    items: list[ItemRead]
    next_cursor: str | None
'''

ROUTES = '''"""The {name} service's endpoints: /items, scoped to the signed-in user (the kit's
OwnedTable: another user's item is a 404, like a missing one)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from {name}.models import Item
from {name}.schemas import ItemCreate, ItemPage, ItemRead, ItemUpdate
from platform_auth.deps import CurrentUser
from service_kit.errors import NotFound
from service_kit.ids import generate_id
from service_kit.owned import OwnedTable, encode_cursor
from service_kit.transaction import ReadDb, WriteDb
from service_kit.types import utcnow

PREFIX = "/items"
PAGE_DEFAULT, PAGE_MAX = 20, 100
LOCATION = {{"description": "URL of the new item", "schema": {{"type": "string", "format": "uri"}}}}

items = OwnedTable(Item.__table__)  # type: ignore[attr-defined]

# Every error a route can answer is documented from its code (service_kit.openapi).
router = APIRouter(prefix=PREFIX, tags=["items"])


class ItemNotFound(NotFound):
    code = "ITEM_NOT_FOUND"
    message = "Item not found"


def _found(row: dict[str, Any] | None) -> ItemRead:
    if row is None:
        raise ItemNotFound()
    return ItemRead.model_validate(row)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ItemRead,
    responses={{201: {{"headers": {{"Location": LOCATION}}}}}},
)
async def create_item(
    body: ItemCreate, request: Request, response: Response, db: WriteDb, user: CurrentUser
) -> ItemRead:
    """Create an item for the signed-in user."""
    now = utcnow()
    values = {{"id": generate_id(), "user_id": user.id, "created_at": now, "updated_at": now}}
    item = ItemRead.model_validate(await items.created(db, values | body.model_dump()))
    response.headers["Location"] = f"{{str(request.base_url).rstrip('/')}}{{PREFIX}}/{{item.id}}"
    return item


@router.get("", response_model=ItemPage)
async def list_items(
    db: ReadDb,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX, description="Page size")] = PAGE_DEFAULT,
    cursor: Annotated[
        str | None, Query(max_length=512, description="`nextCursor` of the previous page")
    ] = None,
) -> ItemPage:
    """The signed-in user's items, newest first, a page at a time."""
    rows = await items.page(db, user.id, cursor=cursor, limit=limit)
    page = [ItemRead.model_validate(r) for r in rows[:limit]]
    more = len(rows) > limit
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
    return ItemPage(items=page, next_cursor=next_cursor)


@router.get("/{{item_id}}", response_model=ItemRead)
async def get_item(item_id: str, db: ReadDb, user: CurrentUser) -> ItemRead:
    """One of the signed-in user's items."""
    return _found(await items.one(db, user.id, item_id))


@router.patch("/{{item_id}}", response_model=ItemRead)
async def update_item(item_id: str, body: ItemUpdate, db: WriteDb, user: CurrentUser) -> ItemRead:
    """Change some fields of one of the signed-in user's items."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        return _found(await items.one(db, user.id, item_id))
    changes["updated_at"] = utcnow()
    return _found(await items.updated(db, user.id, item_id, changes))


@router.delete(
    "/{{item_id}}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
)
async def delete_item(item_id: str, db: WriteDb, user: CurrentUser) -> Response:
    """Delete one of the signed-in user's items."""
    if not await items.deleted(db, user.id, item_id):
        raise ItemNotFound()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
'''

APP = '''"""The {name} service: its migration tree, its app factory and its definition."""

from fastapi import FastAPI

from {name}.routes import router
from platform_auth.app import auth_service
from platform_auth.app import create_app as create_auth_app
from platform_auth.settings import ServiceSettings, load_settings
from platform_db.trees import PLATFORM
from service_kit.migrate import MigrationTree

TREE = MigrationTree(
    name="{name}",
    script_location="{name}:migrations",
    models_module="{name}.models",
    schema="{name}",
    version_table="alembic_version",
    requires=(PLATFORM,),
    create_schema=True,
)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    return create_auth_app(
        title="{name}",
        description="The {name} service.",
        settings=settings or load_settings(),
        routers=[router],
        trees=[TREE],
    )


SERVICE = auth_service(name="{name}", tree=TREE, create_app=create_app, default_port={port})
'''

CLI = '''"""`{name}`: migrate, check, current, stamp, downgrade, revision, serve."""

from {name}.app import SERVICE
from service_kit.service import service_main


def main() -> None:
    service_main(SERVICE)
'''

ENV = '''"""Alembic environment of the {name} tree; the logic is shared in service_kit.migrate."""

from service_kit.migrate import run_env

run_env()
'''

MAKO = '''"""${{message}}

Revision ID: ${{up_revision}}
Revises: ${{down_revision | comma,n}}
Create Date: ${{create_date}}
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel  # noqa: F401  (autogenerate may render sqlmodel.sql.sqltypes.AutoString)
from alembic import op
${{imports if imports else ""}}

revision: str = ${{repr(up_revision)}}
down_revision: str | Sequence[str] | None = ${{repr(down_revision)}}
branch_labels: str | Sequence[str] | None = ${{repr(branch_labels)}}
depends_on: str | Sequence[str] | None = ${{repr(depends_on)}}


def upgrade() -> None:
    ${{upgrades if upgrades else "pass"}}


def downgrade() -> None:
    ${{downgrades if downgrades else "pass"}}
'''

FILES: dict[str, str] = {
    "pyproject.toml": PYPROJECT,
    "src/{name}/__init__.py": '"""The {name} service."""\n',
    "src/{name}/py.typed": "",
    "src/{name}/models.py": MODELS,
    "src/{name}/schemas.py": SCHEMAS,
    "src/{name}/routes.py": ROUTES,
    "src/{name}/app.py": APP,
    "src/{name}/cli.py": CLI,
    "src/{name}/migrations/env.py": ENV,
    "src/{name}/migrations/script.py.mako": MAKO,
    "src/{name}/migrations/versions/.gitkeep": "",
}


def _add_to_workspace(pyproject: Path, name: str) -> None:
    """List the new member in the root pyproject.toml: members, dependencies, sources."""
    text = pyproject.read_text()
    member, dist = f'"services/{name}"', f'"{name}-service"'
    replacements = (
        (r"(members = \[[^\]]*?)\s*\]", rf"\1, {member}]"),
        (r"(\ndependencies = \[[^\]]*?)\s*\]", rf"\1, {dist}]"),
        (r"(\[tool\.uv\.sources\]\n(?:.+\n)*)", rf"\g<1>{name}-service = {{ workspace = true }}\n"),
    )
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text, count=1)
        if count != 1:
            raise MigrationError(f"cannot find where to add {name} in {pyproject}: edit it by hand")
    parsed = tomllib.loads(text)  # still valid TOML, with the member in all three places
    assert f"services/{name}" in parsed["tool"]["uv"]["workspace"]["members"]
    pyproject.write_text(text)


def new_service(root: Path, name: str, port: int) -> Path:
    """Write services/NAME under the workspace `root` and add it to the workspace."""
    if not _NAME.match(name) or keyword.iskeyword(name) or name in _TAKEN:
        raise MigrationError(
            f"{name!r} cannot name a service: lower case letters, digits and _, starting with "
            "a letter, not a Python keyword nor a name the workspace uses"
        )
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.uv.workspace]" not in pyproject.read_text():
        raise MigrationError(f"{root} is not the workspace root (no [tool.uv.workspace])")
    target = root / "services" / name
    if target.exists():
        raise MigrationError(f"{target} exists already")
    for relative, template in FILES.items():
        path = target / relative.format(name=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, port=port))
    _add_to_workspace(pyproject, name)
    return target


def register(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int | None]:
    """Add `new-service` to `platform-db` (the entry point `platform_db.commands`)."""
    p = subcommands(parser).add_parser(
        "new-service", help="write services/NAME, a new service, and add it to the workspace"
    )
    p.add_argument("name", help="the service's package, command and Postgres schema")
    p.add_argument("--port", type=int, default=8003, help="its default port (default 8003)")
    p.add_argument("--root", type=Path, default=Path(), help="the workspace root (default .)")

    def handle(args: argparse.Namespace) -> int | None:
        if args.command != "new-service":
            return None
        target = new_service(args.root, args.name, args.port)
        print(f"wrote {target}; next: uv sync, then {args.name} revision -m 'create items'")
        return 0

    return handle
