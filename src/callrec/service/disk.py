"""A full disk: reads keep working, ``/healthz`` says degraded, and repeated errors are logged once a minute.

What an API request writes only as bookkeeping (when a key was last used) is written after the request's
own transaction, on its own, and a failure is logged, not answered: with the disk full, every keyed read
still answers. ``/healthz`` reports ``degraded`` (with the reason) when the data folder's file system has
less than ``LOW_FREE_BYTES`` free. A worker whose queue cannot be read (SqliteHuey on a full disk) logs it
once a minute, not at every poll.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from callrec.db.engine import transaction
from callrec.db.schema import ApiKey
from callrec.service.context import Context

log = logging.getLogger("callrec")
# below this much free space where the data folder lives, /healthz says degraded
LOW_FREE_BYTES = 256 * 1024**2
# the same error from the same place is logged at most once per this many seconds
REPEAT_S = 60.0


def low_space(data_dir: Path) -> str | None:
    """Why the data folder is short of space, or None when it is not (or cannot be measured)."""
    try:
        usage = shutil.disk_usage(data_dir)
    except OSError:
        return None
    if usage.free >= LOW_FREE_BYTES:
        return None
    return (f"the data folder's disk has {usage.free // 1024**2} MB free (below {LOW_FREE_BYTES // 1024**2} MB): "
            "new recordings and changes may fail; reads keep working")  # fmt: skip


def note_key_use(ctx: Context, key_id: str, now: datetime) -> None:
    """Record when a key was last used, in a transaction of its own; never fails the request."""
    try:
        with transaction(ctx.sessions) as s:
            s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
    except SQLAlchemyError as exc:  # a full disk, a read-only or busy database: the read still answers
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        REPEATS.warning(log, "key-use", "when a key was last used is not recorded: %s", first)


class Repeats:
    """Logs a message at most once per ``every_s`` per key, saying how many were left out meanwhile."""

    def __init__(self, every_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> int | None:
        """None to leave this one out; else how many were left out since the last one logged."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.every_s:
                self._last[key] = (last[0], last[1] + 1)
                return None
            self._last[key] = (now, 0)
            return last[1] if last is not None else 0

    def warning(self, logger: logging.Logger, key: str, message: str, *args: object) -> None:
        skipped = self.allow(key)
        if skipped is not None:
            logger.warning(message + _more(skipped), *args)


def _more(skipped: int) -> str:
    return f" ({skipped} more like it in the last minute)" if skipped else ""


REPEATS = Repeats()


class OncePerMinute(logging.Filter):
    """A logging filter: the same message from the same logger passes once per ``REPEAT_S`` (a queue that
    cannot be read, a disk that is full), with the count of those left out."""

    def __init__(self, repeats: Repeats | None = None) -> None:
        super().__init__()
        self.repeats = repeats or Repeats()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        skipped = self.repeats.allow(f"{record.name}\0{record.msg}")
        if skipped is None:
            return False
        if skipped:
            record.msg = f"{record.msg}{_more(skipped)}"
        return True


def quiet_repeats(prefix: str = "huey.consumer") -> OncePerMinute:
    """Put a ``OncePerMinute`` on every logger named ``prefix`` or under it that exists now (Huey makes
    one per worker process when the consumer is built)."""
    once = OncePerMinute()
    names = [name for name in logging.Logger.manager.loggerDict if name == prefix or name.startswith(prefix + ".")]
    for name in {prefix, *names}:
        logging.getLogger(name).addFilter(once)
    return once
