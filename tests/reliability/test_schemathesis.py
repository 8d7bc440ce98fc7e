"""Property-based testing of each service's whole API with schemathesis, from its own
OpenAPI document, in process (ASGI), authenticated as a real signed-up user, in two
deployments: development (mail to a real SMTP server, no rate limits) and production
defaults (only DATABASE_URL and AUTH_SECRET set: rate limits on, no mail).

Every operation (the auth routes too) is one test per deployment, on its own database, with
every schemathesis check on: no 5xx, answers match the documented schema (body, content
type, required headers), only documented status codes, schema-violating data refused,
schema-valid data accepted, `Allow` on 405, auth enforced where documented. The run is
bounded (MAX_EXAMPLES fuzzed examples per operation, plus schemathesis' coverage cases) and
reproducible (a fixed seed, derandomized, no example database).

Operations that can end the caller's session (sign-out, revoke-*, change-password,
reset-password) get a session of their own for each example, minted straight in the
database; the session the other operations share is minted again after one of them ran.
In development mail goes to a real SMTP server (aiosmtpd, in a thread), so the mail routes
run for real; in production they answer better-auth's 400s for mail that is off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
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
from schemathesis.specs.openapi.schemas import OpenApiSchema
from starlette.types import Message, Receive, Scope, Send

from platform_auth.settings import ServiceSettings
from platform_dev.embedded import free_port
from service_kit.service import ServiceDefinition
from tests.conftest import SERVICES, TEST_SECRET, auth_settings
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
        self.statuses: Counter[int] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.requests += 1

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.statuses[message["status"]] += 1
                self.server_errors += message["status"] >= 500
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
# the request does not hold, or on the deployment; only those operations also accept that one
# status:
SEMANTIC_REFUSALS = {
    # a cursor the API never issued: INVALID_CURSOR
    "GET /todos": "400",
    # an address already taken (better-auth's status for it): USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL
    "POST /api/auth/sign-up/email": "422",
    # the current password is wrong: INVALID_PASSWORD
    "POST /api/auth/change-password": "400",
    # signed in, an address that is not the user's: EMAIL_MISMATCH (or, with mail off,
    # VERIFICATION_EMAIL_NOT_ENABLED)
    "POST /api/auth/send-verification-email": "400",
    # a token that was never issued: INVALID_TOKEN
    "GET /api/auth/verify-email": "400",
    "GET /api/auth/reset-password/{token}": "400",
    "POST /api/auth/reset-password": "400",
}
# With mail off (production without SMTP_HOST): RESET_PASSWORD_DISABLED, as better-auth.
NO_MAIL_REFUSALS = {"POST /api/auth/request-password-reset": "400"}
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


@dataclass(frozen=True)
class Deployment:
    """How the service is configured, and where the fuzzer sends its requests."""

    name: str
    base_url: str
    settings: Callable[[str, int], ServiceSettings]  # (database URL, SMTP port)
    refusals: dict[str, str]


def development(db_url: str, smtp_port: int) -> ServiceSettings:
    return auth_settings(
        db_url,
        ENVIRONMENT="development",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=smtp_port,
        SMTP_SECURITY="none",
        SMTP_TIMEOUT=5,
        PASSWORD_HASH_CONCURRENCY=2,
    )


def production_defaults(db_url: str, smtp_port: int) -> ServiceSettings:
    """What `web serve` runs with only the two required settings: rate limits on, no mail."""
    return ServiceSettings.from_values({"DATABASE_URL": db_url, "AUTH_SECRET": TEST_SECRET})


DEPLOYMENTS = {
    "development": Deployment("development", "http://testserver", development, SEMANTIC_REFUSALS),
    # A loopback Host: production answers only its own hosts (AUTH_URL's, or loopback).
    "production": Deployment(
        "production",
        "http://localhost",
        production_defaults,
        SEMANTIC_REFUSALS | NO_MAIL_REFUSALS,
    ),
}


def config_for(deployment: Deployment) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "base-url": deployment.base_url,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "operations": [
                {
                    "include-name": name,
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": [*POSITIVE_DEFAULT, status]
                        }
                    },
                }
                for name, status in deployment.refusals.items()
            ],
        }
    )


# The documents are made at import, to make one test per operation; the app each is checked
# against (and that answers every request) is made per test, on the test's own database.
UNUSED_URL = "postgresql://unused@localhost/unused"
DOCUMENTS = {
    (s.name, d.name): s.create_app(d.settings(UNUSED_URL, 25)).openapi()
    for s in SERVICES
    for d in DEPLOYMENTS.values()
}


def schema_for(service: str, deployment: str) -> OpenApiSchema:
    return schemathesis.openapi.from_dict(
        DOCUMENTS[(service, deployment)], config=config_for(DEPLOYMENTS[deployment])
    )


TALLY: dict[tuple[str, str], list[Target]] = {key: [] for key in DOCUMENTS}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    """One line per service and deployment for docs/reliability.md once every operation ran."""
    yield
    for (name, deployment), targets in TALLY.items():
        if targets:
            statuses: Counter[int] = sum((t.app.statuses for t in targets), Counter())
            seen = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
            record(
                f"schemathesis: {name} API, {deployment}",
                how=(
                    f"{len(targets)} operations from OpenAPI, in process, bearer auth; "
                    f"{MAX_EXAMPLES} fuzzed examples each plus coverage cases; all checks"
                ),
                requests=sum(t.app.requests for t in targets),
                errors=sum(t.app.server_errors + t.failed_examples for t in targets),
                notes=(
                    f"seed {SEED}; errors = 5xx answers + examples failing a check; "
                    f"answers by status: {seen}"
                ),
            )


@contextmanager
def target(service: ServiceDefinition, deployment: Deployment, db_url: str) -> Iterator[Target]:
    """`service`'s app on `db_url`, configured as `deployment`, with a signed-up user."""
    sink = MailSink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        app = service.create_app(deployment.settings(db_url, smtp.port))
        counted = Counted(app)
        with start_blocking_portal() as portal:
            try:
                with asgi.get_client(cast(asgi.ASGIApp, counted)) as client:
                    base = deployment.base_url
                    served = client.get(f"{base}/openapi.json")
                    assert served.status_code == 200, served.text
                    assert served.json() == DOCUMENTS[(service.name, deployment.name)], (
                        "fuzzed a stale document"
                    )
                    r = client.post(
                        f"{base}/api/auth/sign-up/email",
                        json={"name": "Fuzz", "email": "fuzz@example.com", "password": PASSWORD},
                    )
                    assert r.status_code == 200, r.text
                t = Target(counted, Sessions(portal, db_url, r.json()["user"]["id"]), sink)
                TALLY[(service.name, deployment.name)].append(t)
                yield t
            finally:
                # The app's lifespan runs in schemathesis' event loop thread: end it (pool,
                # listener) before the database is dropped.
                asgi.shutdown_lifespans()
    finally:
        smtp.stop()


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


def fixture_for(service: ServiceDefinition, deployment: str) -> Any:
    @pytest.fixture
    def fixture(full_db: str) -> Iterator[Target]:
        with target(service, DEPLOYMENTS[deployment], full_db) as t:
            yield t

    return fixture


web_development = fixture_for(WEB, "development")
web_production = fixture_for(WEB, "production")
trading_development = fixture_for(TRADING, "development")
trading_production = fixture_for(TRADING, "production")


@schema_for("web", "development").parametrize()
@SHARED_FIXTURES
def test_web_development(case: Case[Any], web_development: Target) -> None:
    call(case, web_development)


@schema_for("web", "production").parametrize()
@SHARED_FIXTURES
def test_web_production(case: Case[Any], web_production: Target) -> None:
    call(case, web_production)


@schema_for("trading", "development").parametrize()
@SHARED_FIXTURES
def test_trading_development(case: Case[Any], trading_development: Target) -> None:
    call(case, trading_development)


@schema_for("trading", "production").parametrize()
@SHARED_FIXTURES
def test_trading_production(case: Case[Any], trading_production: Target) -> None:
    call(case, trading_production)


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


@pytest.mark.parametrize("key", sorted(DOCUMENTS), ids="-".join)
def test_the_fuzzed_document_has_every_operation(key: tuple[str, str]) -> None:
    documented = {
        f"{method.upper()} {path}"
        for path, item in DOCUMENTS[key]["paths"].items()
        for method in item
    }
    assert documented == OPERATIONS
    assert SESSION_ENDING | set(SEMANTIC_REFUSALS) | set(NO_MAIL_REFUSALS) <= OPERATIONS
