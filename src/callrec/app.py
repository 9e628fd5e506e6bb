"""The application of ``callrec serve``: the JSON API and the web pages on one FastAPI app.

The two products sit side by side and neither knows the other is here: ``callrec.api`` (JSON under
``/api/v1``, plus ``/healthz`` and ``/metrics``) and ``callrec.web`` (the UI under ``/ui``, the public link
pages under ``/r/``, their files under ``/static``). The web pages read through the API's route functions;
the API never imports the web. Errors become HTTP in one place for both (``callrec.api.handlers``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from callrec.api import (
    admin_keys,
    calls,
    domains,
    handlers,
    interactions,
    jobs,
    links,
    ops,
    picture,
    recordings,
    uploads,
    webhooks,
)
from callrec.api.bodylimit import BodyLimit
from callrec.service import cache
from callrec.service.pipeline import Service
from callrec.web import link_pages, ui

API_PREFIX = "/api/v1"
# uploads larger than this are refused with 413 while they arrive
MAX_UPLOAD_BYTES = 2 * 1024**3


def create_app(service: Service, *, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The app for ``service`` (its context, queue and pipeline); OpenAPI at ``/openapi.json``."""

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
    # the JSON API
    for module in (domains, admin_keys, calls, recordings, picture, uploads, jobs, interactions, links, webhooks):
        app.include_router(module.router, prefix=API_PREFIX)
    # the web: public link pages, the UI and their files
    app.include_router(link_pages.public_router)
    app.include_router(ui.router)
    ui.mount(app)
    app.include_router(ops.make_router(service))
    handlers.install(app)
    # the last one added is the outermost of the app's own: it sees what every other layer let through
    app.add_middleware(BodyLimit)  # 413 for a body past the limit, before anything reads it
    app.add_middleware(handlers.LastResort)
    app.add_middleware(EdgeHeaders)  # outermost: even a last-resort 500 carries them
    return app


class EdgeHeaders:
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
        wanted = dict(EVERY_ANSWER)
        if path.startswith("/r/"):
            wanted |= link_pages.PUBLIC_HEADERS
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


EVERY_ANSWER = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
