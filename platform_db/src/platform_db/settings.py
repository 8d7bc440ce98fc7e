"""Settings read from the environment. Names are a contract with operators: keep them."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class DatabaseSettings(BaseSettings):
    """What every command that touches the database needs."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = Field(
        validation_alias="DATABASE_URL",
        description="Postgres URL, e.g. postgresql://user:password@host:5432/dbname",
    )
    db_pool_size: int = Field(default=10, ge=1, validation_alias="DB_POOL_SIZE")
    db_max_overflow: int = Field(default=10, ge=0, validation_alias="DB_MAX_OVERFLOW")
    # How long a service's `migrate` waits for the platform tree to reach its head, and how
    # long any `migrate` waits for another process's migration lock.
    platform_wait_timeout: float = Field(
        default=60.0, ge=0, validation_alias="PLATFORM_WAIT_TIMEOUT"
    )
    migration_lock_timeout: float = Field(
        default=300.0, ge=0, validation_alias="MIGRATION_LOCK_TIMEOUT"
    )


class AuthSettings(DatabaseSettings):
    """Everything a service process needs: database plus the shared login."""

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

    @field_validator("trusted_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @cached_property
    def secure_cookies(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.environment != "development"

    @cached_property
    def session_cookie_name(self) -> str:
        name = f"{self.cookie_prefix}.session_token"
        return f"__Secure-{name}" if self.secure_cookies else name
