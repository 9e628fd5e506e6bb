"""Objects as files under one folder: the storage of a single machine, and the fastest one to test against."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from callrec.errors import StorageError
from callrec.storage.base import (
    COPY_CHUNK_BYTES,
    ObjectInfo,
    check_key,
    check_prefix,
    check_range,
    file_md5,
    os_reason,
    temp_path_beside,
    write_atomically,
)

# a concurrent delete may remove an empty folder between our mkdir and our create
MKDIR_ATTEMPTS = 3


class LocalStorage:
    """Files under ``root``; every write goes to a temporary file in the destination folder, then a rename."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} cannot be created: {os_reason(exc)}") from exc

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        dest = self._path(key)
        try:
            source = path.open("rb")
        except OSError as exc:
            raise StorageError(f"upload of {key} failed: {path} cannot be read: {os_reason(exc)}") from exc
        with source:
            return self._store(key, dest, _read_blocks(source, path, key))

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        dest = self._path(key)
        return self._store(key, dest, (data[i : i + COPY_CHUNK_BYTES] for i in range(0, len(data), COPY_CHUNK_BYTES)))

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            if not path.is_file():
                return None
            size, md5 = file_md5(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"stat of {key} in {self.root} failed: {os_reason(exc)}") from exc
        return ObjectInfo(key, size, md5)

    def read_range(self, key: str, start: int = 0, end: int | None = None, chunk: int = 65536) -> Iterator[bytes]:
        check_range(key, start, end, chunk)
        path = self._path(key)
        # checked now so a missing key fails at the call, not at the first next()
        if not path.is_file():
            raise StorageError(f"object {key} does not exist in {self.root}")
        return self._read(key, path, start, end, chunk)

    def download(self, key: str, dest: Path) -> None:
        write_atomically(dest, self.read_range(key, chunk=COPY_CHUNK_BYTES), key)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return  # a folder is only a prefix of other keys, never an object
        except OSError as exc:
            raise StorageError(f"delete of {key} in {self.root} failed: {os_reason(exc)}") from exc
        # remove the folders this leaves empty, never the root itself
        folder = path.parent
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent

    def list(self, prefix: str = "") -> Iterator[str]:
        check_prefix(prefix)
        start = self.root / prefix.rpartition("/")[0]
        keys: list[str] = []
        try:
            for folder, dirs, files in os.walk(start):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                rel = Path(folder).relative_to(self.root).as_posix()
                base = "" if rel == "." else rel + "/"
                names = (base + name for name in files if not name.startswith("."))
                keys.extend(key for key in names if key.startswith(prefix))
        except OSError as exc:
            raise StorageError(f"listing {prefix!r} in {self.root} failed: {os_reason(exc)}") from exc
        # sorted as strings ("a-b" before "a/b"), which a folder walk does not give
        return iter(sorted(keys))

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _store(self, key: str, dest: Path, blocks: Iterable[bytes]) -> ObjectInfo:
        """Copy ``blocks`` to a temporary file beside ``dest``, verify it by re-reading, then rename."""
        tmp = temp_path_beside(dest)
        try:
            f = self._create(dest, tmp)
            with f:
                digest = hashlib.md5(usedforsecurity=False)
                size = 0
                for block in blocks:
                    f.write(block)
                    digest.update(block)
                    size += len(block)
                f.flush()
                os.fsync(f.fileno())
            md5 = digest.hexdigest()
            # verify what the disk gives back, not what we handed to it
            read_size, read_md5 = file_md5(tmp)
            if (read_size, read_md5) != (size, md5):
                raise StorageError(
                    f"upload of {key} failed verification: wrote {size} bytes (md5 {md5}), "
                    f"read back {read_size} bytes (md5 {read_md5})"
                )
            tmp.replace(dest)
            _fsync_folder(dest.parent)
        except OSError as exc:
            raise StorageError(f"upload of {key} to {self.root} failed: {os_reason(exc)}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return ObjectInfo(key, size, md5)

    @staticmethod
    def _create(dest: Path, tmp: Path) -> io.BufferedWriter:
        for attempt in range(MKDIR_ATTEMPTS):
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tmp.open("xb")
            except FileNotFoundError:
                if attempt == MKDIR_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _read(self, key: str, path: Path, start: int, end: int | None, chunk: int) -> Iterator[bytes]:
        try:
            with path.open("rb") as f:
                f.seek(start)
                left = None if end is None else end - start
                while left is None or left > 0:
                    block = f.read(chunk if left is None else min(chunk, left))
                    if not block:
                        return
                    if left is not None:
                        left -= len(block)
                    yield block
        except OSError as exc:
            raise StorageError(f"read of {key} in {self.root} failed: {os_reason(exc)}") from exc


def _read_blocks(source: BinaryIO, path: Path, key: str) -> Iterator[bytes]:
    try:
        while block := source.read(COPY_CHUNK_BYTES):
            yield block
    except OSError as exc:
        raise StorageError(f"upload of {key} failed: {path} cannot be read: {os_reason(exc)}") from exc


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
