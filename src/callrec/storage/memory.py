"""Objects in a dict: a real backend (it passes the contract suite) for unit tests of the code that stores.

Two knobs let a test make the next uploads fail the way real storage fails:
``fail_next_puts`` refuses them outright, ``corrupt_next_puts`` stores altered bytes so that the
read-back verification catches it. Either way the put raises ``StorageError`` and leaves no object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from callrec.errors import StorageError
from callrec.storage.base import (
    COPY_CHUNK_BYTES,
    ObjectInfo,
    check_key,
    check_prefix,
    check_range,
    md5_hex,
    os_reason,
    write_atomically,
)


class MemoryStorage:
    """Thread-safe in-memory object storage."""

    kind = "memory"

    def __init__(self) -> None:
        self.fail_next_puts = 0
        self.corrupt_next_puts = 0
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStorage({len(self._objects)} objects)"

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        check_key(key)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StorageError(f"upload of {key} failed: {path} cannot be read: {os_reason(exc)}") from exc
        return self.put_bytes(key, data)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        check_key(key)
        data = bytes(data)
        expected = md5_hex(data)
        with self._lock:
            if self.fail_next_puts > 0:
                self.fail_next_puts -= 1
                raise StorageError(f"upload of {key} failed: refused by MemoryStorage.fail_next_puts")
            stored = data
            if self.corrupt_next_puts > 0:
                self.corrupt_next_puts -= 1
                stored = _corrupt(data)
            self._objects[key] = stored
            # the same read-back check the other backends make
            got = self._objects[key]
            if len(got) != len(data) or md5_hex(got) != expected:
                del self._objects[key]
                raise StorageError(
                    f"upload of {key} failed verification: sent {len(data)} bytes (md5 {expected}), "
                    f"stored {len(got)} bytes (md5 {md5_hex(got)})"
                )
        return ObjectInfo(key, len(data), expected)

    def stat(self, key: str) -> ObjectInfo | None:
        check_key(key)
        with self._lock:
            data = self._objects.get(key)
        return None if data is None else ObjectInfo(key, len(data), md5_hex(data))

    def read_range(self, key: str, start: int = 0, end: int | None = None, chunk: int = 65536) -> Iterator[bytes]:
        check_key(key)
        check_range(key, start, end, chunk)
        with self._lock:
            data = self._objects.get(key)
        if data is None:
            raise StorageError(f"object {key} does not exist in memory storage")
        part = data[start:end]
        return (part[i : i + chunk] for i in range(0, len(part), chunk))

    def download(self, key: str, dest: Path) -> None:
        write_atomically(dest, self.read_range(key, chunk=COPY_CHUNK_BYTES), key)

    def local_path(self, key: str) -> Path | None:
        check_key(key)
        return None

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
        return iter(keys)


def _corrupt(data: bytes) -> bytes:
    """The bytes with one flipped in the middle, or one appended when there are none to flip."""
    if not data:
        return b"\x00"
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
