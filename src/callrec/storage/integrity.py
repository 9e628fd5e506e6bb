"""A stored object checked against the row that stored it, before any of its bytes are served.

A row keeps the size and MD5 of what it put in storage; an object that no longer matches them (replaced
by another writer, cut short, damaged) is refused rather than served as if it were the row's. The check
is cheap: S3 answers size and MD5 with one HEAD; a local file's MD5 is computed once per version of the
file (device, inode, size, mtime) and remembered, so a player's many Range requests read it only once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from callrec.errors import StorageError
from callrec.storage.base import Storage, file_md5, os_reason

# local files whose MD5 is remembered (one entry is a few hundred bytes)
MEMO_ENTRIES = 4096
_memo: OrderedDict[tuple[str, int, int, int, int], str] = OrderedDict()
_lock = threading.Lock()


def mismatch(storage: Storage, key: str, size: int, md5: str) -> str | None:
    """Why the object under ``key`` is not the one of ``size`` bytes with ``md5``, or None when it is.

    A row that does not know its size (0) or its MD5 ("") is checked only on what it knows; a backend
    that cannot tell an object's MD5 is checked on size. A missing object raises ``StorageError``.
    """
    found_size, found_md5 = _facts(storage, key)
    return differs(found_size, found_md5, size, md5)


def differs(found_size: int, found_md5: str, size: int, md5: str) -> str | None:
    """Why an object of ``found_size`` bytes with ``found_md5`` is not the row's (``size``, ``md5``), or None."""
    if size > 0 and found_size != size:
        return f"storage holds {found_size} bytes under its key, the recording has {size}"
    if md5 and found_md5 and found_md5 != md5.lower():
        return f"storage holds other content under its key (md5 {found_md5}, the recording has {md5})"
    return None


def _facts(storage: Storage, key: str) -> tuple[int, str]:
    path = storage.local_path(key)
    if path is None:
        info = storage.stat(key)
        if info is None:
            raise StorageError(f"object {key} is missing from storage")
        return info.size, info.md5
    return _local_facts(path, key)


def _local_facts(path: Path, key: str) -> tuple[int, str]:
    try:
        st = os.stat(path)
        version = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with _lock:
            known = _memo.get(version)
            if known is not None:
                _memo.move_to_end(version)
                return st.st_size, known
        size, md5 = file_md5(path)
    except FileNotFoundError as exc:
        raise StorageError(f"object {key} is missing from storage") from exc
    except OSError as exc:
        raise StorageError(f"reading {key} to check it failed: {os_reason(exc)}") from exc
    if size == st.st_size:  # not changed while it was read: worth remembering
        with _lock:
            _memo[version] = md5
            while len(_memo) > MEMO_ENTRIES:
                _memo.popitem(last=False)
    return size, md5
