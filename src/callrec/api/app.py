"""The HTTP API of ``callrec serve``: the FastAPI application and the one place errors become HTTP.

Every error answers JSON ``{"detail": "<one sentence>"}``. Storage, the database or the job queue out of
reach answers 503 with ``Retry-After``; everything a client can cause is a 4xx saying what to change. Any
other failure is a bug: JSON 500 ``{"detail": "internal error", "error_id": ...}``, its traceback logged
once with that id (``_LastResort``), never Starlette's plain-text "Internal Server Error".
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from huey.exceptions import HueyException
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callrec.api import (
    admin_keys,
    calls,
    domains,
    interactions,
    jobs,
    links,
    ops,
    picture,
    recordings,
    ui,
    uploads,
    webhooks,
)
from callrec.api.bodylimit import BodyLimit
from callrec.api.link_pages import PUBLIC_HEADERS
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
# when to try again after a 503 for something out of reach
RETRY_AFTER_S = 5
# the job queue's connection failures: Redis, Huey itself, and SqliteHuey's file (busy or unreadable);
# the service's own database errors come wrapped by SQLAlchemy, never as a bare sqlite3 error
_QUEUE_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, HueyException,
                                              sqlite3.OperationalError)  # fmt: skip


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
    for module in (domains, admin_keys, calls, recordings, picture, uploads, jobs, interactions, links, webhooks):
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
    app.add_exception_handler(DBAPIError, _failure)
    for queue_error in _QUEUE_DOWN:
        app.add_exception_handler(queue_error, _failure)
    # the last one added is the outermost of the app's own: it sees what every other layer let through
    app.add_middleware(BodyLimit)  # 413 for a body past the limit, before anything reads it
    app.add_middleware(_LastResort)
    app.add_middleware(_EdgeHeaders)  # outermost: even a last-resort 500 carries them
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
    return _detail(503, "storage cannot be reached at the moment; try again later", _retry_after())


async def _callrec_error(_request: Request, exc: Exception) -> JSONResponse:
    # a bad file or value the service cannot use (a damaged capture, an unreadable call.json)
    return _detail(400, str(exc))


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S)}


def _out_of_reach(exc: BaseException) -> str | None:
    """What a connection failure could not reach ("the database", "the job queue"); None for anything else."""
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return "the database"
    if isinstance(exc, _QUEUE_DOWN):
        return "the job queue"
    return None


async def _failure(request: Request, exc: Exception) -> JSONResponse:
    """503 for the database or the job queue out of reach; 500 with an error id for anything else."""
    reached = _out_of_reach(exc)
    if reached is not None:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("%s %s: %s: %s", request.method, request.url.path, reached.removeprefix("the "), first)
        return _detail(503, f"{reached} cannot be reached", _retry_after())
    error_id = secrets.token_hex(8)
    log.error("%s %s: internal error %s", request.method, request.url.path, error_id,
              exc_info=(type(exc), exc, exc.__traceback__))  # fmt: skip
    return JSONResponse({"detail": "internal error", "error_id": error_id}, status_code=500)


class _EdgeHeaders:
    """Headers every answer carries unless the route set its own: never framed by another site, never
    sniffed; a public link's answers (``/r/...``) also carry ``link_pages.PUBLIC_HEADERS`` (no-store,
    no-referrer, noindex), whatever produced them, a 500 included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        wanted = dict(_EVERY_ANSWER)
        if path.startswith("/r/"):
            wanted |= PUBLIC_HEADERS
        elif path == "/ui" or path.startswith("/ui/"):
            wanted["Content-Security-Policy"] = "frame-ancestors 'none'"

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in wanted.items()
                            if k.lower().encode("latin-1") not in present]  # fmt: skip
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


_EVERY_ANSWER = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


class _LastResort:
    """Answers ``_failure`` for an exception no handler took, unless part of an answer is already out.

    Not an exception handler for ``Exception``: Starlette runs that one in its ServerErrorMiddleware,
    which answers and then raises the exception again for the server to log, so every traceback would
    be logged twice (once without its error id).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # half an answer is out: only the server can end the connection
                raise
            response = await _failure(Request(scope, receive), exc)
            await response(scope, receive, send)
