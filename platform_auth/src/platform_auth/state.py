"""The login's typed application state: one per app, set up by its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.applications import Starlette

from platform_auth.cache import SessionCache, SessionListener
from platform_auth.housekeeping import Sweeper
from platform_auth.mail import Mailer
from platform_auth.metrics import AuthMetrics
from platform_auth.passwords import PasswordHasher
from platform_auth.sessions import SessionPolicy
from platform_auth.settings import ServiceSettings


@dataclass
class AuthState:
    """On `app.state.auth`; read it through `auth_state(app)`, never by name."""

    settings: ServiceSettings
    hasher: PasswordHasher
    mailer: Mailer
    policy: SessionPolicy
    cache: SessionCache
    listener: SessionListener | None = None
    sweeper: Sweeper | None = None
    metrics: AuthMetrics | None = None  # when METRICS_PORT is set


def auth_state(app: Starlette) -> AuthState:
    state: AuthState = app.state.auth
    return state
