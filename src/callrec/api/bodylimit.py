"""A limit on request bodies: anything but an upload larger than ``MAX_BODY_BYTES`` gets 413 naming it.

Uploads (``POST /api/v1/uploads``) have their own, larger limit, enforced while the file arrives. Every
other body (settings, links, sign-in forms, ...) is small; a larger one is refused before the app reads
it: by its Content-Length when it has one, else once that many bytes have arrived.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1024 * 1024
UPLOAD_PATHS = ("/api/v1/uploads",)


class BodyLimit:
    """Pure ASGI middleware (the body is read at most once, and only when it has no Content-Length)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit():
            if int(declared) > self.limit:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        # chunked: read it here, up to the limit, then hand the app what arrived
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"the request body is larger than the limit of {self.limit} bytes"}).encode()
        start: dict[str, Any] = {
            "type": "http.response.start", "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        }  # fmt: skip
        await send(start)
        await send({"type": "http.response.body", "body": body})
