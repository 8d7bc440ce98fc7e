"""The request's database session: ReadDb (no transaction) or WriteDb (the request's one
transaction, owned here: handlers and helpers never commit)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service_kit.db import Database, ReadSession
from service_kit.errors import InvalidInput, ServiceUnavailable
from service_kit.openapi import raises
from service_kit.state import kit_state


def database(request: Request) -> Database:
    """The process's database (the kit's typed state, set up by the app's lifespan)."""
    return kit_state(request.app).database


# The error handlers answer a database out of reach with 503 and a value Postgres refuses
# (SQLSTATE class 22) with 400: every route with a session can answer either.
@raises(ServiceUnavailable, InvalidInput)
async def _read_session(request: Request) -> AsyncIterator[ReadSession]:
    # Autocommit: every statement is already committed; there is nothing to end.
    async with database(request).read_sessionmaker() as session:
        yield session


@raises(ServiceUnavailable, InvalidInput)
async def _write_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit when the handler returns, roll back if it raises."""
    async with database(request).write_sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        await session.commit()


# The two kinds of request session, chosen by the route, not by its HTTP verb:
# ReadDb runs statements without a transaction (a GET that only reads);
# WriteDb is the request's one transaction, committed before the response is sent
# (scope="function"), so a failed commit is never a 2xx.
ReadDb = Annotated[ReadSession, Depends(_read_session)]
WriteDb = Annotated[AsyncSession, Depends(_write_session, scope="function")]
