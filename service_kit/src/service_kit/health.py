"""Liveness and readiness, the same in every service."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service_kit.errors import ErrorBody
from service_kit.migrate import current_heads
from service_kit.state import kit_state

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    trees: dict[str, str]


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
    """The database is reachable and every migration tree this service needs is at its head."""
    state = kit_state(request.app)
    db, trees, heads = state.database, state.trees, state.tree_heads
    found: dict[str, str] = {}
    try:
        async with asyncio.timeout(5), db.engine.connect() as conn:
            for tree in trees:
                current = await current_heads(conn, tree)
                found[tree.name] = " ".join(current)
                if current != heads[tree.name]:
                    at = found[tree.name] or "nothing"
                    expected = " ".join(heads[tree.name])
                    message = f"the {tree.name} tree is at {at}, expected {expected}"
                    return JSONResponse({"code": "NOT_READY", "message": message}, status_code=503)
    except (OSError, TimeoutError, Exception) as exc:
        return JSONResponse(
            {"code": "NOT_READY", "message": f"database unreachable: {type(exc).__name__}"},
            status_code=503,
        )
    return Readiness(status="ready", trees=found)
