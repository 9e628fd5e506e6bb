"""Which tapes are open, and by whom, so that the tapes of a recorder that died can be closed.

Every recorder process holds an exclusive ``flock`` on a lock file of its own under ``tapes/.owners``
for as long as it lives; the kernel drops it when the process dies, however it dies (kill -9 too).
Each open tape has a marker under ``tapes/.open`` naming its folder and its owner. At start-up a
recorder closes every marked tape whose owner's lock it can take: the owner is gone. Several recorders
may share one tapes folder; none touches another live one's tapes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
from pathlib import Path

from callrec.errors import CallrecError
from callrec.files import tape
from callrec.files.pcapwriter import PcapWriter

log = logging.getLogger("callrec.recovery")

OPEN_DIR = ".open"
OWNERS_DIR = ".owners"


class TapeRegistry:
    """The open-tape markers of one recorder process, and the recovery of dead recorders' tapes."""

    def __init__(self, tapes_dir: Path) -> None:
        self.root = tapes_dir
        (self.root / OPEN_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / OWNERS_DIR).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().replace("/", "_")
        self.owner = f"{host}-{os.getpid()}-{secrets.token_hex(3)}"
        self._lock_path = self.root / OWNERS_DIR / f"{self.owner}.lock"
        self._lock_fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _marker(self, folder: Path) -> Path:
        return self.root / OPEN_DIR / folder.name

    def register(self, folder: Path) -> None:
        """Mark a tape open (before its first packet)."""
        data = {"folder": os.path.relpath(folder, self.root), "owner": self.owner}
        self._marker(folder).write_text(json.dumps(data), "utf-8")

    def unregister(self, folder: Path) -> None:
        """The tape is closed: drop its marker."""
        self._marker(folder).unlink(missing_ok=True)

    def recover(self) -> list[Path]:
        """Close and mark interrupted every tape left open by a recorder that is no longer running."""
        recovered: list[Path] = []
        for marker in sorted((self.root / OPEN_DIR).iterdir()):
            try:
                data = json.loads(marker.read_text("utf-8"))
                folder = (self.root / str(data["folder"])).resolve()
                owner = str(data["owner"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable open-tape marker %s", marker)
                continue
            if owner == self.owner or _alive(self.root / OWNERS_DIR / f"{owner}.lock"):
                continue
            try:
                recover_tape(folder)
            except (OSError, CallrecError) as exc:
                log.error("could not recover tape %s: %s", folder.name, exc)
                # unreadable for good: set aside, so that it is not tried again at every start
                if isinstance(exc, CallrecError) and folder.is_dir() and folder.is_relative_to(self.root.resolve()):
                    tape.quarantine(folder, self.root.parent, "its call.json cannot be read")
                    marker.unlink(missing_ok=True)
                continue
            marker.unlink(missing_ok=True)
            recovered.append(folder)
        # lock files of owners that are gone and left nothing open
        for lock in (self.root / OWNERS_DIR).glob("*.lock"):
            if lock != self._lock_path and not _alive(lock):
                lock.unlink(missing_ok=True)
        return recovered

    def close(self) -> None:
        os.close(self._lock_fd)
        self._lock_path.unlink(missing_ok=True)


def _alive(lock: Path) -> bool:
    """Whether a process still holds ``lock``."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def recover_tape(folder: Path) -> None:
    """Close a tape whose writer died: cut a half-written last packet, mark it interrupted."""
    info = tape.read_info(folder)
    media = folder / tape.MEDIA_FILE
    # the last write before the crash: read before cutting the half-written record changes it
    last_write = media.stat().st_mtime
    PcapWriter(media, append=True).close()  # truncates a record cut off mid-write
    info.closed_cleanly = False
    info.interrupted = True
    info.end_reason = "crash"
    if info.ended_at is None:
        info.ended_at = last_write
    tape.write_info(folder, info)
