"""Settings every command that touches the database reads. Names are a contract with operators."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
