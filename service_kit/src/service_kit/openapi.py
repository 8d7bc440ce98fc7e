"""Every error a route can answer, in its OpenAPI entry, found from the code it runs.

Nothing here is a hand-kept list. For each route the kit collects:

- the `AppError` subclasses named in its endpoint and its dependencies, and, transitively, in
  every function of the app's own packages they name (a `raise`, a returned error, an error
  class passed to a helper: any reference counts);
- the errors declared with `@raises(...)` where an exception handler turns a library's
  exception into an error (the database session's 503), since no source line names them;
- the errors each middleware on the route's path says it answers (`openapi_errors`, a
  classmethod taking the middleware's own options: rate limits, origin and host checks).

Each status is documented with the `ErrorBody` shape, its codes (in the description and as
examples) and the headers its errors always carry (`Retry-After` on 429).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from service_kit.errors import AppError, InvalidJson, ValidationFailed

F = TypeVar("F", bound=Callable[..., Any])
ERROR_BODY_REF = "#/components/schemas/ErrorBody"


def raises(*errors: type[AppError]) -> Callable[[F], F]:
    """Declare errors `fn` leads to that no line of its source names (an exception handler
    maps them from a library's exception)."""

    def mark(fn: F) -> F:
        fn.__raises__ = (*getattr(fn, "__raises__", ()), *errors)  # type: ignore[attr-defined]
        return fn

    return mark


class DocumentsErrors(Protocol):
    """A middleware that can answer errors itself, before or instead of the route."""

    @classmethod
    def openapi_errors(
        cls, method: str, path: str, *args: Any, **options: Any
    ) -> Iterable[type[AppError]]: ...


def _top(module: str | None) -> str:
    return (module or "").split(".", 1)[0]


def _function(obj: object) -> Callable[..., Any] | None:
    """The plain function behind `obj` (bound method, static or class method), if any."""
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    obj = getattr(obj, "__func__", obj)
    if inspect.isfunction(obj):
        fn: Callable[..., Any] = inspect.unwrap(obj)
        return fn
    return None


class _Scanner:
    """Walks functions of the app's own packages for the AppError subclasses they name."""

    def __init__(self, packages: set[str]) -> None:
        self.packages = packages
        self.found: dict[Callable[..., Any], frozenset[type[AppError]]] = {}

    def errors(self, obj: object) -> frozenset[type[AppError]]:
        fn = _function(obj)
        if fn is None and not isinstance(obj, type):
            # A callable instance as a dependency: its class's __call__, and the functions
            # the instance holds (what such a __call__ delegates to).
            call = inspect.getattr_static(type(obj), "__call__", None)
            held = frozenset().union(
                *(self.errors(v) for v in getattr(obj, "__dict__", {}).values() if _function(v))
            )
            return held | self.errors(call) if _function(call) else held
        if fn is None or _top(fn.__module__) not in self.packages:
            return frozenset()
        if fn in self.found:
            return self.found[fn]
        self.found[fn] = frozenset()  # recursion guard
        errors: set[type[AppError]] = set(getattr(fn, "__raises__", ()))
        for ref in self._references(fn):
            if isinstance(ref, type):
                if ref is AppError:  # an annotation such as `type[AppError]`
                    continue
                if issubclass(ref, AppError):
                    errors.add(ref)
                elif _top(ref.__module__) in self.packages:
                    errors |= self.errors(ref.__dict__.get("__init__"))
            else:
                errors |= self.errors(ref)
        self.found[fn] = frozenset(errors)
        return self.found[fn]

    def _references(self, fn: Callable[..., Any]) -> Iterator[object]:
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        except (OSError, TypeError, SyntaxError):
            return
        scope = {**fn.__globals__, **inspect.getclosurevars(fn).nonlocals}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name | ast.Attribute):
                found = _resolve(node, scope)
                if found is not None:
                    yield found


_MISSING = object()


def _resolve(node: ast.expr, scope: dict[str, Any]) -> object | None:
    """What a name or a dotted name refers to, without running any code (no properties)."""
    if isinstance(node, ast.Name):
        value = scope.get(node.id, _MISSING)
    elif isinstance(node, ast.Attribute):
        base = _resolve(node.value, scope)
        if base is None:
            return None
        try:
            value = inspect.getattr_static(base, node.attr)
        except AttributeError:
            return None
    else:
        return None
    return None if value is _MISSING else value


def _dependency_calls(dependant: Dependant) -> Iterator[object]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _dependency_calls(sub)


def _api_routes(app: FastAPI) -> Iterator[RouteContext]:
    """Every API route as served: with the prefix and dependencies of the routers above it."""
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.include_in_schema:
            yield context


def route_errors(
    app: FastAPI, route: RouteContext, method: str, scanner: _Scanner
) -> set[type[AppError]]:
    """Every error `route` can answer to `method`, from its code path."""
    errors = set(scanner.errors(route.endpoint))
    for call in _dependency_calls(route.dependant):
        errors |= scanner.errors(call)
    for layer in app.user_middleware:
        document = getattr(layer.cls, "openapi_errors", None)
        if document is not None:
            errors |= set(document(method, route.path_format, *layer.args, **layer.kwargs))
    if route.body_field is not None:
        errors.add(InvalidJson)
    return errors


def _takes_fastapi_validation(operation: dict[str, Any]) -> bool:
    """Remove FastAPI's own 422 entry (`{"detail": [...]}`); True if there was one."""
    response = operation.get("responses", {}).get("422")
    media = (response or {}).get("content", {}).get("application/json", {})
    if not media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
        return False
    del operation["responses"]["422"]
    return True


def _document(operation: dict[str, Any], errors: Sequence[type[AppError]]) -> None:
    """Add `errors` (all of one status) to `operation`'s responses."""
    status = str(errors[0].status_code)
    response = operation.setdefault("responses", {}).setdefault(status, {"description": ""})
    codes = [c for c in response.get("description", "").split(", ") if c]
    codes += [e.code for e in errors if e.code not in codes]
    response["description"] = ", ".join(codes)
    media = response.setdefault("content", {}).setdefault("application/json", {})
    media["schema"] = {"$ref": ERROR_BODY_REF}
    examples = media.setdefault("examples", {})
    for e in errors:
        examples.setdefault(e.code, {"value": {"code": e.code, "message": e.message}})
    headers: dict[str, Any] = {}
    for e in errors:
        for name, doc in e.documented_headers.items():
            headers.setdefault(name, doc.openapi(required=True))
    for name, header in headers.items():
        # A header is required only when every error of this status sends it.
        header["required"] = all(name in e.documented_headers for e in errors)
    if headers:
        response.setdefault("headers", {}).update(headers)


def document_errors(app: FastAPI, schema: dict[str, Any]) -> None:
    """Write every route's errors into `schema` (the app's generated OpenAPI document)."""
    routes = list(_api_routes(app))
    scanner = _Scanner({"service_kit"} | {_top(r.endpoint.__module__) for r in routes})
    for route in routes:
        path = schema.get("paths", {}).get(route.path_format, {})
        for method in sorted(route.methods or ()):
            operation = path.get(method.lower())
            if operation is None:
                continue
            by_status: dict[int, list[type[AppError]]] = {}
            errors = route_errors(app, route, method, scanner)
            if _takes_fastapi_validation(operation):  # the kit's handler answers ErrorBody
                errors.add(ValidationFailed)
            for error in sorted(errors, key=lambda e: (e.status_code, e.code)):
                by_status.setdefault(error.status_code, []).append(error)
            for same in by_status.values():
                _document(operation, same)
    for unused in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(unused, None)


def install(app: FastAPI) -> None:
    """Generate `app`'s document with every route's errors in it (once, then cached)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            document_errors(app, schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
