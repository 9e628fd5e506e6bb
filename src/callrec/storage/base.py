"""The storage interface every backend implements, and the key rules they all share.

A key is a "/"-separated relative path. The same rules apply to every backend so that a key accepted by
the in-memory store in a unit test is accepted by S3 and by the local folder in production.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from callrec.errors import StorageError

# S3's own limit; a local file name is limited per segment instead
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
COPY_CHUNK_BYTES = 1024 * 1024
# temporary files start with "." so they can never be taken for an object (keys' segments cannot)
TEMP_PREFIX = ".callrec-tmp-"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a backend knows of one stored object."""

    key: str
    size: int
    # lowercase hex MD5 of the content; "" only when the backend cannot know it
    md5: str


class Storage(Protocol):
    """Object storage for recordings and raw tapes.

    Every method raises ``StorageError`` (one line) on failure; nothing foreign escapes.
    """

    kind: str

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store the file's bytes under ``key`` (replacing any object) and verify size and MD5.

        ``path`` is never modified; the caller may delete it once this returns.
        """
        ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` under ``key`` (replacing any object) and verify size and MD5."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and MD5, or None when there is no object under ``key``."""
        ...

    def read_range(self, key: str, start: int = 0, end: int | None = None, chunk: int = 65536) -> Iterator[bytes]:
        """The bytes ``[start, end)`` in chunks of at most ``chunk`` bytes.

        ``end`` None means to the end; a range past the end of the object yields nothing. A missing key
        raises ``StorageError`` when this is called, not when the iterator is first advanced.
        """
        ...

    def download(self, key: str, dest: Path) -> None:
        """Write the object to ``dest`` through a temporary file beside it, so ``dest`` is whole or absent."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's own file when the backend keeps one (local folder), else None."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as in S3), in sorted order."""
        ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ``StorageError`` saying why.

    Segments may not be empty or start with "." (which rules out "." and ".." and keeps temporary
    files apart); backslashes and control characters are refused everywhere.
    """
    if not isinstance(key, str) or not key:
        raise StorageError("object key is empty")
    reason = _key_problem(key)
    if reason is None:
        for segment in key.split("/"):
            if not segment:
                reason = "has an empty path segment"
            elif segment.startswith("."):
                reason = f"has a segment starting with '.' ({segment[:20]!r})"
            elif len(segment.encode()) > MAX_SEGMENT_BYTES:
                reason = f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
            if reason:
                break
    if reason:
        raise StorageError(f"object key {key[:80]!r} is not allowed: it {reason}")
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can begin a valid key ("" is fine), else raise ``StorageError``."""
    reason = _key_problem(prefix) if prefix else None
    if reason is None and prefix:
        segments = prefix.split("/")
        if any(s.startswith(".") or not s for s in segments[:-1]):
            reason = "has an empty segment or one starting with '.'"
        elif segments[-1].startswith(".."):
            reason = "contains '..'"
    if reason:
        raise StorageError(f"key prefix {prefix[:80]!r} is not allowed: it {reason}")
    return prefix


def _key_problem(text: str) -> str | None:
    if text.startswith("/"):
        return "is absolute"
    if "\\" in text:
        return "contains a backslash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return "contains a control character"
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        return "is not valid Unicode"
    if size > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    return None


def check_range(key: str, start: int, end: int | None, chunk: int) -> None:
    """Refuse ranges no caller can mean: a negative start, an end before the start, a chunk below 1."""
    if start < 0 or (end is not None and end < start) or chunk < 1:
        raise StorageError(f"read of {key} asks for an impossible range: start {start}, end {end}, chunk {chunk}")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def file_md5(path: Path) -> tuple[int, str]:
    """Size and MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as f:
        while block := f.read(COPY_CHUNK_BYTES):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def temp_path_beside(path: Path) -> Path:
    return path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}")


def write_atomically(dest: Path, chunks: Iterable[bytes], key: str) -> None:
    """Write ``chunks`` to a temporary file beside ``dest``, fsync, then rename it over ``dest``."""
    tmp = temp_path_beside(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            for block in chunks:
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(dest)
    except OSError as exc:
        raise StorageError(f"download of {key} to {dest} failed: {os_reason(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def os_reason(exc: OSError) -> str:
    """A short reason for an OS error; ENOSPC always reads "no space left on device"."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc) or type(exc).__name__
