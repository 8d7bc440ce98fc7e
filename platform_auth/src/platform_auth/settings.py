"""Settings read from the environment. Names are a contract with operators: keep them."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service_kit.service import load
from service_kit.settings import Settings
from service_kit.urls import origin_of


def parse_rate(value: str) -> tuple[int, float]:
    """`"3/10"`: at most 3 requests per 10 seconds."""
    count, sep, window = value.partition("/")
    try:
        parsed = int(count), float(window)
    except ValueError:
        parsed = (0, 0.0)
    if not sep or parsed[0] < 1 or parsed[1] <= 0:
        raise ValueError(f"a rate limit is MAX/SECONDS, like 3/10; got {value!r}")
    return parsed


class AuthSettings(BaseSettings):
    """The shared login: secret, cookies, sessions, origins, hosts, verification."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    auth_secret: SecretStr = Field(
        validation_alias=AliasChoices("AUTH_SECRET", "BETTER_AUTH_SECRET"),
        min_length=32,
        description="HMAC key for session cookies; the same value in every service.",
    )
    environment: Literal["development", "test", "production"] = Field(
        default="production", validation_alias="ENVIRONMENT"
    )
    cookie_prefix: str = Field(default="better-auth", validation_alias="COOKIE_PREFIX")
    # None means: Secure everywhere except in development.
    cookie_secure: bool | None = Field(default=None, validation_alias="COOKIE_SECURE")
    cookie_domain: str | None = Field(default=None, validation_alias="COOKIE_DOMAIN")
    session_expires_in: int = Field(
        default=7 * 24 * 3600, gt=0, validation_alias="SESSION_EXPIRES_IN"
    )
    session_update_age: int = Field(default=24 * 3600, ge=0, validation_alias="SESSION_UPDATE_AGE")
    trusted_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="TRUSTED_ORIGINS"
    )
    password_hash_concurrency: int = Field(
        default_factory=lambda: max(2, os.cpu_count() or 2),
        ge=1,
        validation_alias="PASSWORD_HASH_CONCURRENCY",
    )

    # Validated sessions cached per process, evicted through LISTEN/NOTIFY; 0 turns it off.
    session_cache_size: int = Field(default=10_000, ge=0, validation_alias="SESSION_CACHE_SIZE")
    session_cache_ttl: float = Field(default=300.0, gt=0, validation_alias="SESSION_CACHE_TTL")
    # Seconds between two sweeps of expired sessions, verification rows and old rate-limit
    # counters by this process (platform_db.sweep; one process at a time); 0 turns it off,
    # for when a CronJob runs `platform-db sweep` instead.
    sweep_interval: float = Field(default=3600.0, ge=0, validation_alias="SWEEP_INTERVAL")

    # Links in mails point here (better-auth's baseURL); default: the URL the request came to.
    auth_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AUTH_URL", "BETTER_AUTH_URL")
    )
    # Host headers this server answers to (`*` for any, `*.example.com` for subdomains); by
    # default the hosts of AUTH_URL and TRUSTED_ORIGINS, and loopback.
    allowed_hosts: Annotated[list[str], NoDecode] | None = Field(
        default=None, validation_alias="ALLOWED_HOSTS"
    )
    require_email_verification: bool = Field(
        default=False, validation_alias="REQUIRE_EMAIL_VERIFICATION"
    )
    email_verification_expires_in: int = Field(
        default=3600, gt=0, validation_alias="EMAIL_VERIFICATION_EXPIRES_IN"
    )
    reset_password_expires_in: int = Field(
        default=3600, gt=0, validation_alias="RESET_PASSWORD_EXPIRES_IN"
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @cached_property
    def host_patterns(self) -> frozenset[str]:
        """ALLOWED_HOSTS, or its default: AUTH_URL's and TRUSTED_ORIGINS' hosts, loopback."""
        if self.allowed_hosts is not None:
            return frozenset(self.allowed_hosts)
        hosts = {"localhost", "127.0.0.1", "[::1]"}
        for origin in self.redirect_origins:
            hosts.add(origin.split("://", 1)[1].rsplit(":", 1)[0])
        return frozenset(hosts)

    @field_validator("trusted_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @cached_property
    def redirect_origins(self) -> frozenset[str]:
        """Origins a redirect may leave for: TRUSTED_ORIGINS and AUTH_URL's, normalised."""
        found = (origin_of(o) for o in [*self.trusted_origins, self.auth_url or ""])
        return frozenset(o for o in found if o is not None)

    @cached_property
    def secure_cookies(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.environment != "development"

    def cookie_name(self, name: str) -> str:
        full = f"{self.cookie_prefix}.{name}"
        return f"__Secure-{full}" if self.secure_cookies else full

    @cached_property
    def session_cookie_name(self) -> str:
        return self.cookie_name("session_token")

    @cached_property
    def dont_remember_cookie_name(self) -> str:
        return self.cookie_name("dont_remember")


class MailSettings(BaseSettings):
    """Where mail goes."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Mail: SMTP when SMTP_HOST is set; otherwise written to the log in development, and
    # refused elsewhere (400 RESET_PASSWORD_DISABLED / VERIFICATION_EMAIL_NOT_ENABLED, as
    # better-auth without its mail callbacks) rather than silently dropped.
    smtp_host: str | None = Field(default=None, validation_alias="SMTP_HOST")
    smtp_port: int | None = Field(default=None, ge=1, le=65535, validation_alias="SMTP_PORT")
    smtp_username: str | None = Field(default=None, validation_alias="SMTP_USERNAME")
    smtp_password: SecretStr | None = Field(default=None, validation_alias="SMTP_PASSWORD")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        default="starttls", validation_alias="SMTP_SECURITY"
    )
    smtp_timeout: float = Field(default=30.0, gt=0, validation_alias="SMTP_TIMEOUT")
    mail_from: str = Field(default="no-reply@localhost", validation_alias="MAIL_FROM")


class RateLimitSettings(BaseSettings):
    """Rate limits per client address and auth path, the limit set per route group."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # None: on, except in development and test (as better-auth).
    rate_limit_enabled: bool | None = Field(default=None, validation_alias="RATE_LIMIT_ENABLED")
    # Where the counters live: "database" (the platform's rate_limit table, shared by every
    # replica and worker, and by better-auth apps on the database) or "memory" (each process
    # its own). None: memory in development, the database elsewhere.
    rate_limit_storage: Literal["memory", "database"] | None = Field(
        default=None, validation_alias="RATE_LIMIT_STORAGE"
    )
    rate_limit_sign_in: str = Field(default="3/10", validation_alias="RATE_LIMIT_SIGN_IN")
    rate_limit_sign_up: str = Field(default="3/10", validation_alias="RATE_LIMIT_SIGN_UP")
    rate_limit_password: str = Field(default="3/10", validation_alias="RATE_LIMIT_PASSWORD")
    rate_limit_email: str = Field(default="3/60", validation_alias="RATE_LIMIT_EMAIL")

    @field_validator(
        "rate_limit_sign_in", "rate_limit_sign_up", "rate_limit_password", "rate_limit_email"
    )
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value


class ServiceSettings(Settings):
    """Everything a service process reads, one object per concern, assembled here."""

    auth: AuthSettings
    mail: MailSettings
    rate_limits: RateLimitSettings

    @model_validator(mode="after")
    def _verification_needs_mail(self) -> ServiceSettings:
        no_mail = not self.mail.smtp_host and self.auth.environment != "development"
        if self.auth.require_email_verification and no_mail:
            raise ValueError(
                "REQUIRE_EMAIL_VERIFICATION needs SMTP_HOST: without mail nobody could "
                "verify, so nobody could sign in"
            )
        return self

    @model_validator(mode="after")
    def _mail_links_need_auth_url(self) -> ServiceSettings:
        if (
            self.mail.smtp_host
            and not self.auth.auth_url
            and self.auth.environment != "development"
        ):
            raise ValueError(
                "SMTP_HOST needs AUTH_URL (the public base URL, e.g. https://app.example.com): "
                "links in mails are built from it, never from a request's Host header"
            )
        if self.auth.auth_url and origin_of(self.auth.auth_url) is None:
            raise ValueError("AUTH_URL must be an http(s) URL such as https://app.example.com")
        return self

    @cached_property
    def rate_limit_storage(self) -> Literal["memory", "database"]:
        if self.rate_limits.rate_limit_storage is not None:
            return self.rate_limits.rate_limit_storage
        return "memory" if self.auth.environment == "development" else "database"

    @cached_property
    def rate_limits_on(self) -> bool:
        if self.rate_limits.rate_limit_enabled is not None:
            return self.rate_limits.rate_limit_enabled
        return self.auth.environment == "production"


def load_settings() -> ServiceSettings:
    """A service process's settings, from the environment (one readable error if wrong)."""
    return load(ServiceSettings.from_env, "settings")
