"""Settings, one object per concern, read from the environment and assembled in one place.

The variable names are a contract with operators: keep them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service_kit.logs import LogFormat
from service_kit.logs import resolve as resolve_log_format


class DatabaseSettings(BaseSettings):
    """What every command that touches the database needs."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    database_url: str = Field(
        validation_alias="DATABASE_URL",
        description="Postgres URL, e.g. postgresql://user:password@host:5432/dbname",
    )
    # The direct URL (no transaction pooler in between), for what a transaction pooler cannot
    # carry: the migrations' session advisory lock and the session cache's LISTEN. Set it when
    # DATABASE_URL is a pooled URL (PgBouncer in transaction mode); DATABASE_URL is then run
    # without prepared-statement caching.
    database_direct_url: str | None = Field(default=None, validation_alias="DATABASE_DIRECT_URL")
    # Connections kept open (opened as needed). No overflow by default: SQLAlchemy closes an
    # overflow connection when it is returned, so load above the pool size would open and
    # close one per request (measured: +12% CPU per request and twice the p99).
    db_pool_size: int = Field(default=20, ge=1, validation_alias="DB_POOL_SIZE")
    db_max_overflow: int = Field(default=0, ge=0, validation_alias="DB_MAX_OVERFLOW")
    # How long a service's `migrate` waits for the platform tree to reach its head, and how
    # long any `migrate` waits for another process's migration lock.
    platform_wait_timeout: float = Field(
        default=60.0, ge=0, validation_alias="PLATFORM_WAIT_TIMEOUT"
    )
    migration_lock_timeout: float = Field(
        default=300.0, ge=0, validation_alias="MIGRATION_LOCK_TIMEOUT"
    )
    # How long one migration statement may wait for a table's lock (Postgres lock_timeout)
    # before the run is rolled back and tried again, so that live queries never queue long
    # behind a migration; the retries end after MIGRATION_LOCK_TIMEOUT.
    migration_ddl_lock_timeout: float = Field(
        default=5.0, gt=0, validation_alias="MIGRATION_DDL_LOCK_TIMEOUT"
    )

    @property
    def direct_url(self) -> str:
        """Where migrations and LISTEN go: DATABASE_DIRECT_URL, else DATABASE_URL."""
        return self.database_direct_url or self.database_url

    @property
    def pooled(self) -> bool:
        """DATABASE_URL is a transaction-pooled URL (a distinct direct URL was given)."""
        return self.database_direct_url not in (None, "", self.database_url)


class ServerSettings(BaseSettings):
    """How `serve` runs uvicorn and what a request may carry."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = Field(default="127.0.0.1", validation_alias="HOST")
    port: int | None = Field(default=None, ge=1, le=65535, validation_alias="PORT")
    # Worker processes `serve` runs (uvicorn's and gunicorn's variable); each has its own pool
    # and session listener. Migrations run once, before the workers start.
    workers: int = Field(default=1, ge=1, le=64, validation_alias="WEB_CONCURRENCY")
    log_level: str = Field(default="info", validation_alias="LOG_LEVEL")
    access_log: bool = Field(default=True, validation_alias="ACCESS_LOG")
    # json (one object per line, for a log collector) or text; None: text in development,
    # json elsewhere (service_kit.logs).
    log_format: LogFormat | None = Field(default=None, validation_alias="LOG_FORMAT")
    # Prometheus metrics on their own port (service_kit.metrics); None: no metrics.
    metrics_port: int | None = Field(default=None, ge=1, le=65535, validation_alias="METRICS_PORT")
    # OpenTelemetry's own variables (service_kit.tracing): traces when an endpoint is set.
    otel_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
    )
    otel_sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")
    environment: str = Field(default="production", validation_alias="ENVIRONMENT")
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated
    # addresses or networks, `*` for any). None by default: a client's own address is what
    # counts for rate limits and logs, and no local process can choose another.
    forwarded_allow_ips: str = Field(default="", validation_alias="FORWARDED_ALLOW_IPS")
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, validation_alias="MAX_HEADER_BYTES")
    max_headers: int = Field(default=100, ge=8, validation_alias="MAX_HEADERS")
    header_timeout: float = Field(default=10.0, gt=0, validation_alias="HEADER_TIMEOUT")
    max_connections: int = Field(default=1000, ge=1, validation_alias="MAX_CONNECTIONS")
    keep_alive_timeout: int = Field(default=5, ge=1, validation_alias="KEEP_ALIVE_TIMEOUT")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, validation_alias="MAX_BODY_BYTES")

    @field_validator("log_level")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @field_validator("log_format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        return value.strip().lower() or None if isinstance(value, str) else value

    @property
    def tracing(self) -> bool:
        """Traces on: an OTLP endpoint is set and the SDK is not switched off."""
        return bool(self.otel_endpoint) and not self.otel_sdk_disabled

    @property
    def log_lines(self) -> LogFormat:
        """The format the process logs in (LOG_FORMAT, else by ENVIRONMENT)."""
        return resolve_log_format(self.log_format, self.environment)


class Settings(BaseModel):
    """The settings of a process, one field per concern (each a BaseSettings class).

    `from_env()` reads every concern from the environment; `from_values()` builds them from
    a mapping of the same variable names (tests). A subclass adds concerns and the checks
    that span them (as model validators).
    """

    model_config = ConfigDict(frozen=True)

    database: DatabaseSettings
    server: ServerSettings

    @classmethod
    def from_env(cls) -> Self:
        return cls.model_validate({name: _concern(cls, name)() for name in cls.model_fields})

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Self:
        return cls.model_validate(
            {name: _concern(cls, name).model_validate(dict(values)) for name in cls.model_fields}
        )


def _concern(cls: type[Settings], name: str) -> type[BaseSettings]:
    kind = cls.model_fields[name].annotation
    assert isinstance(kind, type), (cls, name)
    assert issubclass(kind, BaseSettings), (cls, name)
    return kind
