"""This host's cache of what the API derives from stored recordings: converted audio and picture analyses.

Each API host keeps its own cache under ``data_dir/cache`` (hosts share no disk). An entry is named by
what it was made from: the recording's (or stitch's) id and a tag of its md5 and storage key, so a row
whose file changes (a stitch made again, a recording stored anew) never finds the old entry::

    <recording id>.<tag>.<what>           e.g. <id>.<tag>.wav, <id>.<tag>.picture.json
    stitch-<stitch id>.<tag>.<what>

- **Bounded**: by ``ServiceConfig.cache_max_bytes`` (``CALLREC_CACHE_MAX_MB``). After each new entry the
  least recently used ones go (an entry's mtime is set on every use) until the total fits; the entry just
  made stays even when it alone is larger than the bound.
- **Atomic**: an entry is built in a temporary folder inside the cache and renamed into place, so a
  concurrent request, in this process or another one on the host, sees a whole file or none. Evictions
  are serialized across processes by an ``flock`` on ``.evict.lock``.
- **Never stale**: a handler serves an entry only for a ``completed`` row whose current tag names it, and
  removes a row's entries when it sees the row deleted or otherwise not completed. Retention runs on a
  worker host, so every API host also runs ``cleanup`` periodically (``Cleaner``, started with the app):
  it asks the database about the ids it finds and removes the entries of rows that are gone, not
  completed, or of another version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import select

from callrec.db.schema import COMPLETED, Recording, Stitch
from callrec.service.context import Context

log = logging.getLogger("callrec.service.cache")

Kind = Literal["recording", "stitch"]
# a build's temporary folder inside the cache; one older than STALE_TMP_S was left by a process that died
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 3 * 3600.0
LOCK_NAME = ".evict.lock"
# the most folder entries one eviction or cleanup looks at, and the ids one database query asks about
SCAN_LIMIT = 200_000
BATCH = 500
CLEANUP_INTERVAL_S = 60.0
_ID = r"[0-9A-Za-z]{1,64}"
_NAME = re.compile(rf"(stitch-)?({_ID})\.([0-9a-f]{{16}})\.([a-z0-9][a-z0-9.]{{0,31}})")


def version_tag(md5: str, storage_key: str) -> str:
    """What names one version of a row's stored file: it changes when its md5 or its key does."""
    return hashlib.sha256(f"{md5}\0{storage_key}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Key:
    """One cache entry: ``what`` (``wav``, ``picture.json``) made from one version of a row's file."""

    kind: Kind
    id: str
    tag: str
    what: str

    @classmethod
    def of(cls, row: Recording | Stitch, what: str) -> Key:
        kind: Kind = "stitch" if isinstance(row, Stitch) else "recording"
        return cls(kind, row.id, version_tag(row.md5, row.storage_key), what)

    @property
    def name(self) -> str:
        return f"{_prefix(self.kind)}{self.id}.{self.tag}.{self.what}"

    @classmethod
    def parse(cls, name: str) -> Key | None:
        """The key a file name stands for, or None for a name this module does not make."""
        match = _NAME.fullmatch(name)
        if match is None:
            return None
        stitch, obj_id, tag, what = match.groups()
        return cls("stitch" if stitch else "recording", obj_id, tag, what)


def _prefix(kind: Kind) -> str:
    return "stitch-" if kind == "stitch" else ""


class Cache:
    """The cache folder of this host; cheap to make (all its state is on disk)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def path(self, key: Key) -> Path:
        return self.folder / key.name

    def get(self, key: Key) -> Path | None:
        """The entry's file if it is there, marked as used now; None when it is not."""
        path = self.path(key)
        try:
            os.utime(path)  # used now: the last to be evicted
        except OSError:
            return None
        return path

    def make(self, key: Key, build: Callable[[Path], Path]) -> Path:
        """The entry from the cache, else built now (see ``build``)."""
        found = self.get(key)
        return found if found is not None else self.build(key, build)

    def build(self, key: Key, build: Callable[[Path], Path]) -> Path:
        """Make the entry: ``build(folder)`` writes a file in ``folder`` (a temporary folder in the cache,
        also room for a download) and returns it; it is renamed into place whole, the row's other versions
        are removed and the cache is brought back within its bound."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=TMP_PREFIX, dir=self.folder) as tmp:
            made = build(Path(tmp))
            path = self.path(key)
            os.replace(made, path)
        self.forget(key.kind, key.id, keep_tag=key.tag)
        self.evict(keep=path)
        return path

    def forget(self, kind: Kind, obj_id: str, *, keep_tag: str | None = None) -> int:
        """Remove a row's entries (all of them, or those of versions other than ``keep_tag``); how many."""
        if not re.fullmatch(_ID, obj_id):
            return 0
        removed = 0
        # also a file of the old layout, <recording id>.<format>
        for path in self.folder.glob(f"{_prefix(kind)}{obj_id}.*"):
            key = Key.parse(path.name)
            if key is not None and (key.kind, key.id, key.tag) == (kind, obj_id, keep_tag):
                continue
            removed += _unlink(path)
        return removed

    def evict(self, keep: Path | None = None) -> int:
        """Remove the least recently used entries until the cache fits its bound (never ``keep``)."""
        if not self.folder.is_dir():
            return 0
        with self._evicting():
            entries: list[tuple[int, int, str]] = []
            total = 0
            for entry in self._files():
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                total += st.st_size
                entries.append((st.st_mtime_ns, st.st_size, entry.path))
            if total <= self.max_bytes:
                return 0
            removed = 0
            for _mtime, size, path in sorted(entries):
                if total <= self.max_bytes:
                    break
                if keep is not None and path == str(keep):
                    continue
                removed += _unlink(Path(path))
                total -= size
            return removed

    def entries(self) -> Iterator[tuple[Key | None, Path]]:
        """Every entry (at most SCAN_LIMIT), with its key, or None for a file of another layout."""
        for entry in self._files():
            yield Key.parse(entry.name), Path(entry.path)

    def remove_stale_builds(self, older_than_s: float = STALE_TMP_S) -> int:
        """Remove the temporary folders that processes which died while building left behind."""
        removed = 0
        limit = time.time() - older_than_s
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as found:
            for entry in found:
                if not entry.name.startswith(TMP_PREFIX):
                    continue
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < limit:
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed += 1
        return removed

    def _files(self) -> Iterator[os.DirEntry[str]]:
        """The cache's files, without the hidden ones (builds under way, the lock)."""
        try:
            found = os.scandir(self.folder)
        except FileNotFoundError:
            return
        seen = 0
        with found:
            for entry in found:
                if entry.name.startswith(".") or not _is_file(entry):
                    continue
                seen += 1
                if seen > SCAN_LIMIT:
                    return
                yield entry

    @contextlib.contextmanager
    def _evicting(self) -> Iterator[None]:
        """One eviction at a time on this host, across processes and threads (flock is per open file)."""
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0  # another request or process removed it first
    return 1


def stored_file(ctx: Context, spec: dict[str, Any], key: str, folder: Path, ext: str) -> Path:
    """A stored object as a file to read: where it lies in a local storage, else downloaded into ``folder``."""
    storage = ctx.storage(spec)
    source = storage.local_path(key)
    if source is None or not source.is_file():
        source = folder / f"source.{ext or 'audio'}"
        storage.download(key, source)
    return source


def of(ctx: Context) -> Cache:
    """This host's cache for the service of ``ctx``."""
    return Cache(ctx.config.data_dir / "cache", ctx.config.cache_max_bytes)


# --- removing what the database says is gone ---------------------------------------------------------


@dataclass
class Cleaned:
    """What one ``cleanup`` did."""

    looked_at: int = 0
    removed: int = 0  # entries of rows deleted, gone, not completed or of another version; old-layout files
    evicted: int = 0
    stale_builds: int = 0


def cleanup(ctx: Context, stop: threading.Event | None = None) -> Cleaned:
    """One pass over this host's cache: every entry whose row is gone, not ``completed`` or of another
    version (md5, storage key) is removed, so is every file of an older layout; then the bound is applied.
    At most SCAN_LIMIT entries, asked about BATCH ids per query; ``stop`` ends it between queries."""
    cache = of(ctx)
    done = Cleaned()
    found: dict[tuple[Kind, str], list[tuple[Key, Path]]] = {}
    for key, path in cache.entries():
        done.looked_at += 1
        if key is None:  # <id>.wav, stitch-<id>-<md5>...: nothing says which version it was made from
            done.removed += _unlink(path)
            continue
        found.setdefault((key.kind, key.id), []).append((key, path))
    tables: tuple[tuple[Kind, type[Recording] | type[Stitch]], ...] = (("recording", Recording), ("stitch", Stitch))
    for kind, model in tables:
        ids = sorted(obj_id for k, obj_id in found if k == kind)
        for start in range(0, len(ids), BATCH):
            if stop is not None and stop.is_set():
                return done
            batch = ids[start : start + BATCH]
            query = select(model.id, model.state, model.md5, model.storage_key).where(model.id.in_(batch))
            with ctx.sessions() as s:
                rows = s.execute(query).all()
            current = {r.id: version_tag(r.md5, r.storage_key) for r in rows if r.state == COMPLETED}
            for obj_id in batch:
                for key, path in found[(kind, obj_id)]:
                    if key.tag != current.get(obj_id):
                        done.removed += _unlink(path)
    done.stale_builds = cache.remove_stale_builds()
    done.evicted = cache.evict()
    if done.removed or done.evicted or done.stale_builds:
        log.info("cache: removed %d entries of deleted or changed recordings, evicted %d, %d stale builds",
                 done.removed, done.evicted, done.stale_builds)  # fmt: skip
    return done


@dataclass
class Cleaner:
    """``cleanup`` every ``interval_s`` in a daemon thread of this process, between ``start`` and ``stop``
    (or as a context manager). Each API host runs one: retention deletes on a worker host."""

    ctx: Context
    interval_s: float = CLEANUP_INTERVAL_S
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="callrec-cache-cleanup", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> Cleaner:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                cleanup(self.ctx, self._stop)
            except Exception as exc:  # noqa: BLE001 - the database down, a disk error: try again next time
                log.warning("cache cleanup: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
