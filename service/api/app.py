"""The FastAPI application: routers under /v1, errors mapped to statuses, bodies capped.

Every status a route can answer is in the OpenAPI document: its own (`responses=`), and those
`COMMON_RESPONSES` adds by what the route takes (a token, a path id, a body).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__, tasks
from service.api.routes import (
    checkpoints,
    health,
    jobs,
    logs,
    metrics,
    plan,
    rollbacks,
    scaling,
    tokens,
)
from service.api.spec_body import SpecWorkers
from service.controller.backends import LogReader
from service.db.migrate import head_revision
from service.errors import ServiceError
from service.settings import Settings, get_settings
from service.spec import JobSpec, SpecInvalid
from service.tokens import hash_token


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Answer 413 to any request whose body exceeds `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body is larger than {self.max_bytes} bytes"}, status_code=413
        )
        await response(scope, receive, send)


def _body_loc(loc: list[str | int]) -> list[str | int]:
    """Spec paths start at the document; on the wire they sit under `body`, as FastAPI's own do."""
    return loc if loc[:1] == ["body"] else ["body", *loc]


def _admin_token_hash(settings: Settings) -> str | None:
    if settings.admin_token is not None:
        return hash_token(settings.admin_token.get_secret_value())
    generated = settings.generated_admin_token_path
    if settings.environment == "development" and generated.exists():
        return hash_token(generated.read_text().strip())
    return None


def create_app(
    settings: Settings | None = None,
    *,
    notifier: tasks.Notifier | None = None,
    log_reader: LogReader | None = None,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None = None,
) -> FastAPI:
    """The API on `settings`; `service.main` passes the parts a process shares with it.

    `notifier` hears of every change (default: Celery with Redis, nobody without); `log_reader`
    serves trainer logs (default: the local backend's folders, none on Kubernetes).
    """
    settings = settings or get_settings()
    app = FastAPI(
        title="pretrain-orchestrator",
        version=__version__,
        description="Submit, plan, run and watch LLM pretraining jobs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.notifier = notifier or tasks.notifier_for(settings)
    app.state.log_reader = log_reader if log_reader is not None else _log_reader(settings)
    app.state.admin_token_hash = _admin_token_hash(settings)
    app.state.schema_head = head_revision(settings)
    app.state.spec_workers = SpecWorkers(settings)

    app.include_router(health.router)
    for router in (jobs.router, checkpoints.router, logs.router, metrics.router, rollbacks.router, plan.router, scaling.router, tokens.router):
        app.include_router(router, prefix="/v1")

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        methods = _methods_on(app, request.url.path) if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED else []
        if methods:
            # Starlette names the methods of the first route on the path; a path has several.
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(methods)}
        return await http_exception_handler(request, exc)

    @app.exception_handler(DataError)
    async def data_error(_: Request, exc: DataError) -> JSONResponse:
        # A value the database refuses (out of range, bad encoding) that slipped past validation
        # is still the client's input: say so instead of a 500. Nothing was committed.
        # Its body has the shape of every other 422, as the OpenAPI document says.
        reason = str(exc.orig).splitlines()[0] if exc.orig else "invalid value"
        detail = [{"loc": ["body"], "msg": f"the database refused a value: {reason}", "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(SpecInvalid)
    async def spec_invalid(_: Request, exc: SpecInvalid) -> JSONResponse:
        detail = [{**p.model_dump(), "loc": _body_loc(p.loc)} for p in exc.problems]
        return JSONResponse({"detail": detail}, status_code=422)

    app.openapi = lambda: _openapi_with_job_spec(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app


def _methods_on(app: FastAPI, path: str) -> list[str]:
    """Every method the OpenAPI document lists on `path`."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def _log_reader(settings: Settings) -> LogReader | None:
    """The local backend reads its workloads' folders; the API holds no cluster credentials."""
    if settings.backend != "local":
        return None
    from service.controller.loop import backend_for

    return backend_for(settings)


# The body every error but a 422 carries.
ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {"detail": {"type": "string", "description": "What went wrong, for a person."}},
    "required": ["detail"],
}
# Statuses a route answers by what it takes: a token, an id in its path, a body.
COMMON_RESPONSES: dict[str, dict[str, str]] = {
    "token": {
        "401": "No bearer token, or an unknown or revoked one.",
        "403": "The token's role or job may not do this.",
    },
    "path": {"404": "Nothing has this id."},
    "body": {
        "400": "The body could not be read as its content type.",
        "413": "The body is larger than PRETRAIN_MAX_REQUEST_BYTES.",
    },
}


def _openapi_with_job_spec(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus JobSpec, which the submit route parses itself (JSON or YAML),
    and every status each route can answer."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    job_spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(job_spec.pop("$defs", {}))
    components["JobSpec"] = job_spec
    components["Error"] = ERROR_SCHEMA
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            _document_statuses(path, operation)
    app.openapi_schema = schema
    return schema


def _document_statuses(path: str, operation: dict[str, Any]) -> None:
    """Add the statuses the route answers by what it takes; give each error its body's schema."""
    takes = {
        "token": bool(operation.get("security")),
        "path": "{" in path,
        "body": "requestBody" in operation,
    }
    responses = operation.setdefault("responses", {})
    for what, statuses in COMMON_RESPONSES.items():
        for code, description in statuses.items():
            if takes[what]:
                responses.setdefault(code, {"description": description})
    for code, response in responses.items():
        if code.startswith(("4", "5")) and not response.get("content"):
            response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
