"""Property-based testing of each service's whole API with schemathesis, from its own
OpenAPI document, in process (ASGI), authenticated as a real signed-up user.

Every operation (the auth routes too) is one test, on its own database, with every
schemathesis check on: no 5xx, answers match the documented schema, only documented status
codes, schema-violating data refused, schema-valid data accepted, `Allow` on 405, auth
enforced where documented. The run is bounded (MAX_EXAMPLES fuzzed examples per operation, plus
schemathesis' coverage cases) and reproducible (a fixed seed, derandomized, no example
database).

Operations that can end the caller's session (sign-out, revoke-*, change-password,
reset-password) get a session of their own for each example, minted straight in the
database; the session the other operations share is minted again after one of them ran.
Mail goes to a real SMTP server (aiosmtpd, in a thread), so the mail routes run for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import pytest
import schemathesis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi
from starlette.types import Message, Receive, Scope, Send

from platform_dev.embedded import free_port
from service_kit.service import ServiceDefinition
from tests.conftest import SERVICES, auth_settings
from tests.factories import PASSWORD
from tests.reliability.conftest import mint_session
from tests.reliability.record import record
from trading.app import SERVICE as TRADING
from web.app import SERVICE as WEB

MAX_EXAMPLES = 50  # fuzzed examples per operation (examples and coverage cases come on top)
SEED = 20240607

# Operations whose success can end the session that called them (or every session of its user).
SESSION_ENDING = frozenset(
    {
        "POST /api/auth/sign-out",
        "POST /api/auth/revoke-session",
        "POST /api/auth/revoke-sessions",
        "POST /api/auth/revoke-other-sessions",
        "POST /api/auth/change-password",
        "POST /api/auth/reset-password",
    }
)


class MailSink:
    """aiosmtpd handler: accepts and counts every message."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.count += 1
        return "250 Message accepted for delivery"


@dataclass
class Sessions:
    """Hands out sessions of one user, minted straight in the database."""

    portal: BlockingPortal  # an event loop thread of our own for the SQL
    db_url: str
    user_id: str
    shared: str | None = None
    minted: int = 0

    def mint(self) -> str:
        self.minted += 1
        return self.portal.call(mint_session, self.db_url, self.user_id)

    def token_for(self, label: str) -> str:
        if label in SESSION_ENDING:
            self.shared = None  # whatever it does, the shared session may be gone after it
            return self.mint()
        if self.shared is None:
            self.shared = self.mint()
        return self.shared


class Counted:
    """ASGI wrapper counting the requests the app got and the 5xx it answered."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.requests = self.server_errors = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests += 1

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 500:
                self.server_errors += 1
            await send(message)

        await self.app(scope, receive, counting)


@dataclass
class Target:
    """A running app (its lifespan in schemathesis' event loop thread) and its sessions."""

    app: Counted
    sessions: Sessions
    mails: MailSink
    failed_examples: int = 0


# positive_data_acceptance: a schema-valid request must not be refused (its default list:
# 2xx, 3xx, 401, 403, 404, 409, 429, 5xx; 5xx is caught by not_a_server_error). A few answers
# to schema-valid requests are refusals no schema can foresee, because they depend on data
# the request does not hold; only those operations also accept that one status:
SEMANTIC_REFUSALS = {
    # a cursor the API never issued: INVALID_CURSOR
    "GET /todos": "400",
    # an address already taken (better-auth's status for it): USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL
    "POST /api/auth/sign-up/email": "422",
    # the current password is wrong: INVALID_PASSWORD
    "POST /api/auth/change-password": "400",
    # signed in, an address that is not the user's: EMAIL_MISMATCH
    "POST /api/auth/send-verification-email": "400",
    # a token that was never issued: INVALID_TOKEN
    "GET /api/auth/verify-email": "400",
    "GET /api/auth/reset-password/{token}": "400",
    "POST /api/auth/reset-password": "400",
}
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": SEED,
        "base-url": "http://testserver",
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "operations": [
            {
                "include-name": name,
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": [*POSITIVE_DEFAULT, status]}
                },
            }
            for name, status in SEMANTIC_REFUSALS.items()
        ],
    }
)
# The document is loaded at import, to make one test per operation; the app it is checked
# against (and that answers every request) is made per test, on the test's own database.
UNUSED_URL = "postgresql://unused@localhost/unused"
DOCUMENTS = {s.name: s.create_app(auth_settings(UNUSED_URL)).openapi() for s in SERVICES}
web_schema = schemathesis.openapi.from_dict(DOCUMENTS["web"], config=CONFIG)
trading_schema = schemathesis.openapi.from_dict(DOCUMENTS["trading"], config=CONFIG)

TALLY: dict[str, list[Target]] = {"web": [], "trading": []}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    """One line per service for docs/reliability.md once every operation ran."""
    yield
    for name, targets in TALLY.items():
        if targets:
            record(
                f"schemathesis: {name} API",
                how=(
                    f"{len(targets)} operations from OpenAPI, in process, bearer auth; "
                    f"{MAX_EXAMPLES} fuzzed examples each plus coverage cases; all checks"
                ),
                requests=sum(t.app.requests for t in targets),
                errors=sum(t.app.server_errors + t.failed_examples for t in targets),
                notes=f"seed {SEED}; errors = 5xx answers + examples failing a check",
            )


@contextmanager
def target(service: ServiceDefinition, db_url: str) -> Iterator[Target]:
    """`service`'s app on `db_url`, mail to a real SMTP server, a signed-up user."""
    sink = MailSink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        app = service.create_app(
            auth_settings(
                db_url,
                SMTP_HOST="127.0.0.1",
                SMTP_PORT=smtp.port,
                SMTP_SECURITY="none",
                SMTP_TIMEOUT=5,
                PASSWORD_HASH_CONCURRENCY=2,
            )
        )
        counted = Counted(app)
        with start_blocking_portal() as portal:
            try:
                with asgi.get_client(cast(asgi.ASGIApp, counted)) as client:
                    served = client.get("/openapi.json")
                    assert served.status_code == 200
                    assert served.json() == DOCUMENTS[service.name], "fuzzed a stale document"
                    r = client.post(
                        "/api/auth/sign-up/email",
                        json={"name": "Fuzz", "email": "fuzz@example.com", "password": PASSWORD},
                    )
                    assert r.status_code == 200, r.text
                t = Target(counted, Sessions(portal, db_url, r.json()["user"]["id"]), sink)
                TALLY[service.name].append(t)
                yield t
            finally:
                # The app's lifespan runs in schemathesis' event loop thread: end it (pool,
                # listener) before the database is dropped.
                asgi.shutdown_lifespans()
    finally:
        smtp.stop()


@pytest.fixture
def web_target(full_db: str) -> Iterator[Target]:
    with target(WEB, full_db) as t:
        yield t


@pytest.fixture
def trading_target(full_db: str) -> Iterator[Target]:
    with target(TRADING, full_db) as t:
        yield t


def call(case: Case[Any], target: Target) -> None:
    """Send `case` as the signed-up user (unless it is about a missing or wrong credential)."""
    headers: dict[str, str] | None = None
    if not case.operation.schema.is_security_param_negated(case):
        token = target.sessions.token_for(f"{case.method.upper()} {case.operation.path}")
        headers = {"Authorization": f"Bearer {token}"}
    # The operations were made from the document before the app existed: point them at it, so
    # the checks' own follow-up requests (without auth, other methods, ...) reach it too.
    case.operation.app = case.operation.schema.app = target.app
    try:
        case.call_and_validate(headers=headers)
    except Exception:
        target.failed_examples += 1
        raise


# Each operation is its own test with its own database and app; the examples of one operation
# share them on purpose (sessions are handed out per example by `Sessions`).
SHARED_FIXTURES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@web_schema.parametrize()
@SHARED_FIXTURES
def test_web(case: Case[Any], web_target: Target) -> None:
    call(case, web_target)


@trading_schema.parametrize()
@SHARED_FIXTURES
def test_trading(case: Case[Any], trading_target: Target) -> None:
    call(case, trading_target)


# Every operation each service documents. A new route must be added here, and to
# SESSION_ENDING when it can end the caller's session (it would end the shared one otherwise).
OPERATIONS = {
    "GET /healthz",
    "GET /readyz",
    "POST /api/auth/sign-up/email",
    "POST /api/auth/sign-in/email",
    "POST /api/auth/sign-out",
    "GET /api/auth/get-session",
    "GET /api/auth/list-sessions",
    "POST /api/auth/revoke-session",
    "POST /api/auth/revoke-sessions",
    "POST /api/auth/revoke-other-sessions",
    "POST /api/auth/change-password",
    "POST /api/auth/send-verification-email",
    "GET /api/auth/verify-email",
    "POST /api/auth/request-password-reset",
    "GET /api/auth/reset-password/{token}",
    "POST /api/auth/reset-password",
    "POST /todos",
    "GET /todos",
    "GET /todos/{todo_id}",
    "PATCH /todos/{todo_id}",
    "DELETE /todos/{todo_id}",
}


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_the_fuzzed_document_has_every_operation(service: ServiceDefinition) -> None:
    documented = {
        f"{method.upper()} {path}"
        for path, item in DOCUMENTS[service.name]["paths"].items()
        for method in item
    }
    assert documented == OPERATIONS
    assert SESSION_ENDING | set(SEMANTIC_REFUSALS) <= OPERATIONS
