"""Liveness and readiness, the same in every service."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service_kit.errors import ErrorBody
from service_kit.migrate import status
from service_kit.state import kit_state

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    trees: dict[str, str]  # tree -> the revision(s) the database is at
    # tree -> the revisions the database has beyond this release's head (a newer release
    # migrated it; its migrations keep this one working): present only when there are some.
    ahead: dict[str, list[str]] = {}


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": ErrorBody, "description": "NOT_READY"}},
)
async def readyz(request: Request) -> Readiness | JSONResponse:
    """The database is reachable and every tree this service needs is at its head or ahead."""
    state = kit_state(request.app)
    db, trees, heads, graphs = state.database, state.trees, state.tree_heads, state.tree_graphs
    found: dict[str, str] = {}
    ahead: dict[str, list[str]] = {}
    try:
        async with asyncio.timeout(5), db.engine.connect() as conn:
            for tree in trees:
                tree_status = await status(conn, tree, heads[tree.name], graphs[tree.name])
                found[tree.name] = " ".join(tree_status.found)
                if tree_status.ahead:
                    ahead[tree.name] = list(tree_status.ahead)
                if not tree_status.satisfied:
                    return JSONResponse(
                        {"code": "NOT_READY", "message": tree_status.describe()}, status_code=503
                    )
    except (OSError, TimeoutError, Exception) as exc:
        return JSONResponse(
            {"code": "NOT_READY", "message": f"database unreachable: {type(exc).__name__}"},
            status_code=503,
        )
    return Readiness(status="ready", trees=found, ahead=ahead)
