"""Uploads: a capture (each of its SIP calls becomes a call) or a tape a PBX recorded by itself.

The body is parsed as it arrives: the file goes straight to disk and is refused with 413 once it passes
the limit, so neither memory nor disk holds more than the limit. Each call then becomes a tape folder
like the recorder's (``media.pcap`` a hard link to the one saved copy, ``call.json``) and goes down
the same pipeline.

With an ``Idempotency-Key`` (see ``api.idempotency``) a retry gets the first answer and registers
nothing again. Each call's tape is then named from the key, the caller's API key id, a hash of the
body and the call's place in the capture, so a retry of an upload that was cut short part-way finds
the calls already registered (``tape_ref``) and registers only the rest.

A failure never hides a call that was registered: if the service fails after registering some of the
calls, the answer is 503 with ``Retry-After`` and those calls' ids; with a key, that partial answer is
not kept, so the retry with the same key finishes the upload and answers 202 with every id.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from callrec.api import idempotency
from callrec.api.deps import Principal, ServiceDep, UploadDep
from callrec.api.ingest import CutShort, ingest
from callrec.api.schemas import DOMAIN_NAME, UploadOut
from callrec.errors import CallrecError, ServiceError, StorageError
from callrec.files import tape
from callrec.service.pipeline import Service
from callrec.storage.base import os_reason

log = logging.getLogger("callrec.api.uploads")
router = APIRouter(tags=["uploads"])
# the small fields: a tape's call.json and a domain name
FIELD_LIMITS = {"call": 1024 * 1024, "domain": 200}
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "a pcap or pcapng capture, or a tape's media.pcap",
                        },
                        "call": {
                            "type": "string",
                            "format": "binary",
                            "description": "a tape's call.json: the file is then that tape's media",
                        },
                        "domain": {
                            "type": "string",
                            "pattern": DOMAIN_NAME,
                            "description": "the domain to upload into (admin keys only)",
                        },
                    },
                }
            }
        },
    }
}
UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "not a capture, a malformed body or Idempotency-Key, or a bad call.json"},
    409: {"description": "a request with this Idempotency-Key is still being carried out (Retry-After)"},
    413: {"description": "the file is larger than the limit"},
    415: {"description": "the body is not multipart/form-data"},
    422: {"description": "no SIP call in the capture, no file field, or an Idempotency-Key used for another body"},
    503: {
        "description": "the service failed (Retry-After); `calls` lists the calls registered before it did, if "
        "any: retry with the same Idempotency-Key to register the rest without registering those again"
    },
}
IdempotencyKey = Annotated[
    str | None,
    Header(alias=idempotency.HEADER, description="1-200 printable ASCII characters: a retry with the same key "
           "(and the same API key and body) gets the first answer, and nothing is registered twice"),
]  # fmt: skip


class _Form:
    """One multipart body: the ``file`` part streamed to ``path``, the small fields kept in memory."""

    def __init__(self, path: Path, limit: int, *, hashed: bool = False) -> None:
        self.path, self.limit = path, limit
        self.size = 0
        # the file's SHA-256, taken as it arrives (only for an Idempotency-Key: it names the request)
        self.digest = hashlib.sha256() if hashed else None
        self.fields: dict[str, bytearray] = {}
        self.has_file = self.ended = False
        self._out: BinaryIO | None = None
        self._part: str | None = None
        self._headers: dict[bytes, bytes] = {}
        self._field = self._value = b""

    def parser(self, boundary: bytes) -> MultipartParser:
        def header_field(data: bytes, start: int, end: int) -> None:
            self._field += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def header_end() -> None:
            self._headers[self._field.lower()] = self._value
            self._field = self._value = b""

        callbacks: Any = {
            "on_part_begin": self._begin, "on_header_field": header_field, "on_header_value": header_value,
            "on_header_end": header_end, "on_headers_finished": self._headers_done, "on_part_data": self._data,
            "on_part_end": self._end_part, "on_end": self._end,
        }  # fmt: skip
        return MultipartParser(boundary, callbacks)

    def _begin(self) -> None:
        self._headers, self._part = {}, None

    def _end(self) -> None:
        self.ended = True

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part = params.get(b"name", b"").decode("latin-1")
        if self._part == "file":
            if self.has_file:
                raise ServiceError("the upload has more than one file field", 400)
            self.has_file = True
            self._out = self.path.open("wb")
        elif self._part in FIELD_LIMITS:
            self.fields[self._part] = bytearray()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file" and self._out is not None:
            self.size += end - start
            if self.size > self.limit:
                raise ServiceError(f"the file is larger than the limit of {self.limit} bytes", 413)
            self._out.write(data[start:end])
            if self.digest is not None:
                self.digest.update(data[start:end])
        elif self._part in self.fields:
            field = self.fields[self._part]
            field += data[start:end]
            if len(field) > FIELD_LIMITS[self._part]:
                raise ServiceError(f"the {self._part} field is larger than {FIELD_LIMITS[self._part]} bytes", 413)

    def _end_part(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def close(self) -> None:
        self._end_part()

    def fingerprint(self) -> str:
        """What the upload asks for: the file's hash and every field, as one hash."""
        assert self.digest is not None
        parts = [self.digest.digest()]
        for name in sorted(self.fields):
            parts += [name.encode(), bytes(self.fields[name])]
        return idempotency.fingerprint(*parts)


@router.post("/uploads", status_code=202, response_model=UploadOut, openapi_extra=UPLOAD_BODY,
             responses=UPLOAD_RESPONSES,
             summary="Upload a capture, or a tape (media.pcap and call.json)")  # fmt: skip
async def upload(
    request: Request, service: ServiceDep, principal: UploadDep, idempotency_key: IdempotencyKey = None
) -> Any:
    key = idempotency.parse_key(idempotency_key)
    limit: int = request.app.state.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 64 * 1024 + FIELD_LIMITS["call"]:
        raise ServiceError(f"the file is larger than the limit of {limit} bytes", 413)
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise ServiceError("the upload must be multipart/form-data with a file field", 415)
    staging = service.ctx.config.data_dir / "uploads" / secrets.token_hex(8)
    try:
        staging.mkdir(parents=True)
        form = _Form(staging / tape.MEDIA_FILE, limit, hashed=key is not None)
        try:
            parser = form.parser(params[b"boundary"])
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except FormParserError as exc:
            raise ServiceError("the multipart body is malformed", 400) from exc
        finally:
            form.close()
        if not form.ended:
            raise ServiceError("the multipart body is incomplete", 400)
        if not form.has_file:
            raise ServiceError("file: the upload has no file field", 422)
        fields = {name: bytes(value) for name, value in form.fields.items()}
        if key is None:
            return await _register(service, principal, form.path, fields, None)
        return await _register_once(service, principal, form, fields, key)
    except OSError as exc:  # the service's own disk (full, or not writable)
        raise StorageError(f"the upload cannot be saved: {os_reason(exc)}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


async def _register_once(
    service: Service, principal: Principal, form: _Form, fields: dict[str, bytes], key: str
) -> dict[str, Any] | JSONResponse:
    """``_register`` under an Idempotency-Key: the first answer again for a retry, 409 while it runs."""
    asked = form.fingerprint()
    held = await run_in_threadpool(idempotency.claim, service.ctx, principal.key_id, key, asked)
    if isinstance(held, idempotency.Replay):
        return held.response()

    def name(index: int) -> str:
        # the same key, caller and body name the same tapes, so a retry finds the calls made before
        return "upload-" + idempotency.fingerprint(principal.key_id.encode(), key.encode(), asked.encode(),
                                                   str(index).encode())[:20]  # fmt: skip

    try:
        async with held.kept_alive():
            answer = await _register(service, principal, form.path, fields, name)
    except BaseException:  # nothing was registered: the key is free for a retry
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(held.release)
        raise
    if isinstance(answer, JSONResponse):  # cut short: not kept, so the retry registers the rest
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(held.release)
        return answer
    try:
        await run_in_threadpool(held.finish, 202, answer)
    except Exception as exc:  # every call is registered: a retry (once the claim goes stale) finds them again
        log.warning("upload with an Idempotency-Key: its answer was not kept: %s", type(exc).__name__)
    return answer


async def _register(
    service: Service, principal: Principal, media: Path, fields: dict[str, bytes], name: Callable[[int], str] | None
) -> dict[str, Any] | JSONResponse:
    """The calls of the upload registered: ``{"calls": [...]}``, or a 503 listing the calls registered
    before the service failed part-way. A failure before any call was registered is raised as it is."""
    try:
        calls = await run_in_threadpool(ingest, service, principal, media, fields, name)
    except CutShort as exc:
        cut = exc
    else:
        return {"calls": calls}
    cause = cut.cause
    if not cut.calls:
        if isinstance(cause, CallrecError) and not isinstance(cause, (ServiceError, StorageError)):
            # our own tape folder could not be read back: the service's fault, and its text names a server path
            raise RuntimeError("an uploaded call could not be registered") from cause
        raise cause
    error_id = secrets.token_hex(8)
    log.error("upload cut short after %d of %d calls (error id %s)", len(cut.calls), cut.total, error_id,
              exc_info=(type(cause), cause, cause.__traceback__))  # fmt: skip
    then = (
        "send it again with the same Idempotency-Key to register the rest (the calls listed are not registered twice)"
        if name is not None
        else "sending it again registers the calls listed a second time (an Idempotency-Key makes a retry safe)"
    )
    detail = (f"the upload was cut short: {len(cut.calls)} of its {cut.total} calls were registered (listed in "
              f"calls) before the service failed; {then}")  # fmt: skip
    return JSONResponse({"detail": detail, "calls": cut.calls, "error_id": error_id}, status_code=503,
                        headers={"Retry-After": "5"})  # fmt: skip
