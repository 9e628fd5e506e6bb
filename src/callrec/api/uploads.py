"""Uploads: a capture (each of its SIP calls becomes a call) or a tape a PBX recorded by itself.

The body is parsed as it arrives: the file goes straight to disk and is refused with 413 once it passes
the limit, so neither memory nor disk holds more than the limit. Each call then becomes a tape folder
like the recorder's (``media.pcap`` a hard link to the one saved copy, ``call.json``) and goes down
the same pipeline.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from callrec.api.deps import Principal, PrincipalDep, ServiceDep
from callrec.api.schemas import DOMAIN_NAME, UploadOut
from callrec.capture import tape
from callrec.capture.scan import calls_in_capture
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import Domain
from callrec.errors import CaptureError, ParseError, ServiceError, StorageError
from callrec.models import CallInfo
from callrec.service.pipeline import Service
from callrec.storage.base import os_reason

router = APIRouter(tags=["uploads"])
PCAP_MAGICS = (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a")
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


class _Form:
    """One multipart body: the ``file`` part streamed to ``path``, the small fields kept in memory."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit
        self.size = 0
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


@router.post("/uploads", status_code=202, response_model=UploadOut, openapi_extra=UPLOAD_BODY,
             summary="Upload a capture, or a tape (media.pcap and call.json)")  # fmt: skip
async def upload(request: Request, service: ServiceDep, principal: PrincipalDep) -> dict[str, Any]:
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
        form = _Form(staging / tape.MEDIA_FILE, limit)
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
        calls = await run_in_threadpool(_ingest, service, principal, form.path, fields)
    except OSError as exc:  # the service's own disk (full, or not writable)
        raise StorageError(f"the upload cannot be saved: {os_reason(exc)}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"calls": calls}


def _ingest(service: Service, principal: Principal, media: Path, fields: dict[str, bytes]) -> list[str]:
    """Check the capture, find its calls, and hand each one to the pipeline as a closed tape."""
    with media.open("rb") as f:
        if f.read(4) not in PCAP_MAGICS:
            raise ServiceError("the file is not a pcap or pcapng capture", 400)
    domain = _domain(service, principal, fields.get("domain"))
    infos = [_tape_info(fields["call"])] if "call" in fields else _calls(media)
    ctx = service.ctx
    day = ctx.clock.now().strftime("%Y/%m/%d")
    folders = []
    for info in map(_without_nul, infos):
        info.domain, info.source, info.closed_cleanly, info.interrupted = domain, "upload", True, False
        folder = ctx.config.data_dir / "tapes" / day / f"upload-{secrets.token_hex(8)}"
        folder.mkdir(parents=True)
        try:
            os.link(media, folder / tape.MEDIA_FILE)
        except OSError:  # a file system without hard links
            shutil.copyfile(media, folder / tape.MEDIA_FILE)
        tape.write_info(folder, info)
        folders.append(folder)
    return [service.pipeline.tape_closed(folder) for folder in folders]


def _domain(service: Service, principal: Principal, asked: bytes | None) -> str:
    """The domain the upload goes to: the key's own, or (admin keys) the one asked for or ``default``."""
    name = asked.decode("utf-8", "replace").strip() if asked is not None else None
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        if not principal.admin:
            own = s.get(Domain, principal.domain_id)
            assert own is not None
            if name and name != own.name:
                raise ServiceError("only an admin key may upload into another domain", 403)
            return own.name
        if not name:
            return queries.ensure_domain(s, queries.DEFAULT_DOMAIN, ctx.clock.now()).name
        if len(name) > 64 or "\x00" in name or queries.domain_by_name(s, name) is None:
            raise ServiceError(f"no domain named {name[:64]!r}", 404)
        return name


def _tape_info(raw: bytes) -> CallInfo:
    try:
        info = CallInfo.from_json(json.loads(raw))
    except (ValueError, ParseError, RecursionError) as exc:
        raise ServiceError("call: the call field is not a valid call.json", 400) from exc
    return info


def _without_nul(info: CallInfo) -> CallInfo:
    """The info with NUL characters dropped: SIP may carry them, no database stores them in text."""
    return CallInfo.from_json(_drop_nul(info.to_json()))


def _drop_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_drop_nul(k): _drop_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_drop_nul(v) for v in value]
    return value


def _calls(media: Path) -> list[CallInfo]:
    try:
        found = calls_in_capture(media)
    except CaptureError as exc:
        reason = str(exc).split(": ", 1)[-1]  # without our file's path
        raise ServiceError(f"the capture cannot be read: {reason}", 400) from exc
    if not found:
        raise ServiceError("no SIP call found in the capture", 422)
    return found
