"""The one place errors become HTTP, for the JSON API and the web pages alike.

Every error answers JSON ``{"detail": "<one sentence>"}``. Storage, the database or the job queue out of
reach answers 503 with ``Retry-After``; everything a client can cause is a 4xx saying what to change: the
service's own kinds (``NotFound``, ``Conflict``, ``Gone``, ``Refused``) are mapped to their status here
(``status_of``), a ``ServiceError`` the API raised carries its own. Any other failure is a bug: JSON 500
``{"detail": "internal error", "error_id": ...}``, its traceback logged once with that id (``LastResort``),
never Starlette's plain-text "Internal Server Error".
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
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

from callrec.config import ConfigError
from callrec.errors import CallrecError, Conflict, Gone, NotFound, Refused, ServiceError, StorageError

log = logging.getLogger("callrec.api")
# where a validation error was found, as pydantic names it; not part of the field's name
_LOCATIONS = ("body", "query", "path", "header", "cookie")
# when to try again after a 503 for something out of reach
RETRY_AFTER_S = 5
# the job queue's connection failures: Redis, Huey itself, and SqliteHuey's file (busy or unreadable);
# the service's own database errors come wrapped by SQLAlchemy, never as a bare sqlite3 error
_QUEUE_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, HueyException,
                                              sqlite3.OperationalError)  # fmt: skip


# the HTTP status of each kind of refusal the layers below the API raise (they know nothing of HTTP)
STATUS: dict[type[ServiceError], int] = {NotFound: 404, Conflict: 409, Gone: 410, Refused: 422}


def install(app: FastAPI) -> None:
    """Every exception handler of the app (the last-resort middleware is added by the app's assembly)."""
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


def status_of(exc: ServiceError) -> int:
    """The HTTP status ``exc`` answers: the one the API gave it, else its kind's, else 400."""
    if exc.status is not None:
        return exc.status
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return status
    return 400


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
    return _detail(status_of(exc), str(exc))


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


class LastResort:
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
