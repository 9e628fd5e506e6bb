"""Serving audio: HTTP Range over any storage, and conversion to the other format on request.

``recording_response`` is what every audio route calls (the API's and a public link's), once it has
decided the caller may have the recording. A converted file is made once per version of the recording
(its md5 and storage key) in this host's cache (``callrec.service.cache``: bounded, least recently used
evicted, cleaned of deleted recordings) and served with Range like a stored one.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import numpy.typing as npt
from fastapi.responses import JSONResponse, Response, StreamingResponse

from callrec.db.schema import COMPLETED, DELETED, Recording
from callrec.errors import CallrecError, ServiceError, StorageError
from callrec.media.encode import open_writer
from callrec.media_limits import DEFAULT_BITRATE_KBPS, MP3_BITRATES_KBPS
from callrec.names import safe_name
from callrec.service import cache
from callrec.service.context import Context
from callrec.storage import integrity
from callrec.storage.base import Storage, file_md5

MEDIA_TYPES = {"mp3": "audio/mpeg", "wav": "audio/wav"}
CHUNK_BYTES = 64 * 1024
# at most 18 digits a side (below 2**63): a longer number is no file's offset, so the Range is ignored
_SINGLE_RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
Reader = Callable[[int, int], Iterator[bytes]]
log = logging.getLogger(__name__)


class Unsatisfiable(CallrecError):
    """The Range asks for bytes the file does not have."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range, or None to send the whole file (no Range, another
    unit, several ranges or a malformed one: RFC 9110 lets a server ignore those). ``Unsatisfiable`` when
    the range starts past the end."""
    if not header:
        return None
    match = _SINGLE_RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # "-n": the last n bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable("the range holds no bytes of the file")
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable("the range starts past the end of the file")
    return start, min(size, int(last) + 1) if last else size


def ranged_response(range_header: str | None, size: int, read: Reader, media_type: str, filename: str) -> Response:
    """200 with the whole file, 206 with one range of it, or 416; ``read(start, end)`` yields the bytes."""
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{filename}"'}
    try:
        wanted = parse_range(range_header, size)
    except Unsatisfiable as exc:
        headers["Content-Range"] = f"bytes */{size}"
        return JSONResponse({"detail": f"{exc} ({size} bytes)"}, status_code=416, headers=headers)
    start, end = wanted if wanted is not None else (0, size)
    # read now, so a storage error answers 503 before any byte of a 200 is sent
    chunks = read(start, end) if end > start else iter(())
    headers["Content-Length"] = str(end - start)
    if wanted is None:
        return StreamingResponse(chunks, status_code=200, media_type=media_type, headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(chunks, status_code=206, media_type=media_type, headers=headers)


def recording_response(ctx: Context, rec: Recording, fmt: str | None, range_header: str | None) -> Response:
    """A completed recording's audio, in its stored format or converted to ``fmt``."""
    check_completed(ctx, rec)
    name = safe_name(rec.call.sip_call_id or rec.call_id, limit=100)
    fmt = fmt or rec.format
    if fmt == rec.format:
        storage, key = ctx.storage(rec.storage), rec.storage_key
        verify_stored(storage, key, rec.bytes, rec.md5, f"recording {rec.id}")
        size = rec.bytes
        if size <= 0:
            found = storage.stat(key)
            if found is None:
                raise StorageError(f"recording {rec.id} is missing from storage")
            size = found.size

        def read(start: int, end: int) -> Iterator[bytes]:
            return storage.read_range(key, start, end, CHUNK_BYTES)

        return ranged_response(range_header, size, read, MEDIA_TYPES[fmt], f"{name}.{fmt}")
    for _ in range(3):
        try:
            f = converted(ctx, rec, fmt).open("rb")
        except FileNotFoundError:
            continue  # evicted by another request between being made and being opened: made again
        return _file_response(f, range_header, MEDIA_TYPES[fmt], f"{name}.{fmt}")
    raise StorageError(f"the converted copy of recording {rec.id} keeps being evicted; the cache is too small")


def _file_response(f: BinaryIO, range_header: str | None, media_type: str, filename: str) -> Response:
    """``ranged_response`` over an open file: what it serves stays whole even if the cache evicts it."""
    used = False

    def read(start: int, end: int) -> Iterator[bytes]:
        nonlocal used
        used = True
        return _read_file(f, start, end)

    try:
        return ranged_response(range_header, os.fstat(f.fileno()).st_size, read, media_type, filename)
    finally:
        if not used:  # a 416 or an empty range: nothing will read it
            f.close()


def verify_stored(storage: Storage, key: str, size: int, md5: str, what: str) -> None:
    """409 with the reason when the object under ``key`` is not what the row stored (its size and md5):
    never someone else's audio, never a damaged file served as the recording."""
    reason = integrity.mismatch(storage, key, size, md5)
    if reason is not None:
        log.error("%s is not served: %s (key %s)", what, reason, key)
        raise ServiceError(f"the stored audio of {what} does not match it: {reason}; it is not served", 409)


def verify_file(path: Path, size: int, md5: str, what: str) -> None:
    """``verify_stored`` for a copy of the object already on this host's disk (about to be converted or
    analysed): 409 with the reason when it is not what the row stored."""
    found_size, found_md5 = file_md5(path)
    reason = integrity.differs(found_size, found_md5, size, md5)
    if reason is not None:
        log.error("%s is not used: %s (%s)", what, reason, path.name)
        raise ServiceError(f"the stored audio of {what} does not match it: {reason}; it is not served", 409)


def check_completed(ctx: Context, rec: Recording) -> None:
    """410 or 409 for a recording that is not completed, whose cached copies are removed now (the routes
    check first; this is the cache's own guarantee that such a row's copy is never served)."""
    if rec.state == COMPLETED:
        return
    forget(ctx, rec.id)
    if rec.state == DELETED:
        raise ServiceError("the recording was deleted", 410)
    raise ServiceError(f"the recording is {rec.state}", 409)


def forget(ctx: Context, recording_id: str) -> None:
    """Remove a recording's converted copies and its picture from this host's cache (it was deleted)."""
    cache.of(ctx).forget("recording", recording_id)


def converted(ctx: Context, rec: Recording, fmt: str) -> Path:
    """The recording converted to ``fmt``, from this host's cache or made now."""

    def build(folder: Path) -> Path:
        source = cache.stored_file(ctx, rec.storage, rec.storage_key, folder, rec.format)
        verify_file(source, rec.bytes, rec.md5, f"recording {rec.id}")
        part = folder / f"out.{fmt}"
        bitrate = rec.options.get("bitrate", DEFAULT_BITRATE_KBPS)
        transcode(source, part, fmt, bitrate if bitrate in MP3_BITRATES_KBPS else DEFAULT_BITRATE_KBPS)
        return part

    try:
        return cache.of(ctx).make(cache.Key.of(rec, fmt), build)
    except OSError as exc:
        raise StorageError(f"converting recording {rec.id} failed: {exc.strerror or exc}") from exc


def transcode(source: Path, dest: Path, fmt: str, bitrate_kbps: int) -> None:
    """Decode ``source`` (MP3 or any WAV) with PyAV and write it as ``fmt`` with the project's encoders."""
    try:
        with av.open(str(source)) as container:
            stream = container.streams.audio[0]
            channels, rate = stream.channels, stream.rate
            resampler = av.AudioResampler(format="s16", layout=stream.layout.name, rate=rate)
            writer = open_writer(dest, fmt=fmt, rate=rate, channels=channels, bitrate_kbps=bitrate_kbps)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    writer.write(_interleaved(out.to_ndarray(), channels))
            for out in resampler.resample(None):
                writer.write(_interleaved(out.to_ndarray(), channels))
            writer.close()
    except (av.error.FFmpegError, IndexError) as exc:
        raise StorageError(f"the stored recording {source.name} cannot be decoded: {exc}") from exc


def _interleaved(data: Any, channels: int) -> npt.NDArray[np.int16]:
    """Packed s16 samples (one row) as (frames, channels)."""
    return np.asarray(data, dtype=np.int16).reshape(-1, channels)


def _read_file(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """``[start, end)`` of an open file (opened before the response starts: a vanished file fails then)."""

    def chunks() -> Iterator[bytes]:
        with f:
            f.seek(start)
            left = end - start
            while left > 0:
                block = f.read(min(CHUNK_BYTES, left))
                if not block:
                    return
                left -= len(block)
                yield block

    return chunks()
