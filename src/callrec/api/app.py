"""The HTTP API of ``callrec serve``: the FastAPI application and the one place errors become HTTP.

Every error answers JSON ``{"detail": "<one sentence>"}``. Only storage (or the database) being out of
reach answers 5xx (503); everything a client can cause is a 4xx saying what to change.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from callrec.api import calls, domains, interactions, jobs, links, ops, picture, recordings, ui, uploads, webhooks
from callrec.config import ConfigError
from callrec.errors import CallrecError, ServiceError, StorageError
from callrec.service import cache
from callrec.service.pipeline import Service

log = logging.getLogger("callrec.api")
API_PREFIX = "/api/v1"
# uploads larger than this are refused with 413 while they arrive
MAX_UPLOAD_BYTES = 2 * 1024**3
# where a validation error was found, as pydantic names it; not part of the field's name
_LOCATIONS = ("body", "query", "path", "header", "cookie")


def create_app(service: Service, *, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The API for ``service`` (its context, queue and pipeline); OpenAPI at ``/openapi.json``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ops.warn_local_storage(service)  # a shared database with storage on this host's disk
        with cache.Cleaner(service.ctx):  # this host's cached copies of deleted recordings go
            yield

    app = FastAPI(
        title="callrec",
        version="1",
        description="Call recording: domains, API keys, calls, recordings and their audio, uploads, jobs.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.max_upload_bytes = max_upload_bytes
    for module in (domains, calls, recordings, picture, uploads, jobs, interactions, links, webhooks):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(links.public_router)
    app.include_router(ui.router)
    ui.mount(app)
    app.include_router(ops.make_router(service))
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(ValidationError, _model_invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(CallrecError, _callrec_error)
    app.add_exception_handler(OperationalError, _database_down)
    return app


def describe(errors: list[Any]) -> str:
    """One sentence for pydantic's errors: the first one, with the field it is about."""
    if not errors:
        return "the request is not valid"
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON: {reason}" if reason else "the request body is not valid JSON"
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in _LOCATIONS:
        loc = loc[1:]
    if not loc and first.get("type") == "missing":
        return "the request body is required"
    field = ".".join(loc) or "the request body"
    message = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
    if message.startswith(field):
        return message  # the validator's own sentence already names the field
    return f"{field}: {message}"


def _detail(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _request_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _detail(422, describe(list(exc.errors())))


async def _model_invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return _detail(422, describe(list(exc.errors())))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = str(exc.detail)
    # Starlette's own answers (no route, wrong method) carry only the status phrase
    if exc.status_code == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"there is nothing at {request.url.path}"
    elif exc.status_code == 405 and detail == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return _detail(exc.status_code, detail, dict(exc.headers or {}))


async def _service_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return _detail(exc.status, str(exc))


async def _config_error(_request: Request, exc: Exception) -> JSONResponse:
    return _detail(400, str(exc))


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: storage: %s", request.method, request.url.path, exc)
    return _detail(503, "storage cannot be reached at the moment; try again later")


async def _callrec_error(_request: Request, exc: Exception) -> JSONResponse:
    # a bad file or value the service cannot use (a damaged capture, an unreadable call.json)
    return _detail(400, str(exc))


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: database: %s", request.method, request.url.path, str(exc).splitlines()[0])
    return _detail(503, "the database cannot be reached")
