"""Bases for wire models: camelCase on the wire (as better-auth), snake_case in Python."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, PlainSerializer, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel


def _js_iso(value: datetime) -> str:
    # JavaScript's Date (so better-auth's client) reads at most milliseconds: it would take
    # ".598892" as 598892 ms. Send what JSON.stringify(new Date()) sends.
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


Timestamp = Annotated[
    datetime,
    PlainSerializer(_js_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        from_attributes=True,
    )


class InputModel(ApiModel):
    """A request body: unknown fields refused, JSON types as documented (strict: no 0 for
    false, no "1" for true)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _patch_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Fields in `not_null` may be left out of a PATCH, not set to null: say so in OpenAPI."""
    names = getattr(model, "not_null", ())
    for name in names:
        alias = to_camel(name)
        prop = schema["properties"][alias if alias in schema["properties"] else name]
        (kept,) = [s for s in prop.pop("anyOf") if s.get("type") != "null"]
        prop.update(kept)
        prop.pop("default", None)


class PatchModel(InputModel):
    """A PATCH body: every field optional (declare them `X | None = None`); a field named in
    `not_null` may be left out, but null is refused (its column cannot hold it)."""

    model_config = ConfigDict(json_schema_extra=_patch_schema)
    not_null: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _no_null_for_required(self) -> Self:
        for name in self.not_null:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self
