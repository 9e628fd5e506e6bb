"""Tapes: the raw recording of one call — ``media.pcap`` (every packet as received) and ``call.json``."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

from callrec.errors import ParseError
from callrec.files.atomic import write_json
from callrec.files.pcapwriter import PcapWriter  # not files.pcap: asking about a tape loads no numpy
from callrec.models import CallInfo
from callrec.names import safe_name
from callrec.wire.netparse import pack_addr

log = logging.getLogger("callrec.tape")

MEDIA_FILE = "media.pcap"
META_FILE = "call.json"
# every file of a tape (what storage keeps under a tape's key)
FILES = (MEDIA_FILE, META_FILE)
# under the data folder: tapes that cannot be read, moved out of the way of the outbox and recovery
QUARANTINE_DIR = "quarantine"
# where a tape lies under the tapes folder (DATA/tapes): a folder for the day (UTC) its call started, then
# the tape's own folder; this module alone knows it (everyone asks tape_folder, info_files, find_named)
DAY_FORMAT = "%Y/%m/%d"
_DAY_GLOB = "[0-9]*/*/*"
# the longest Call-ID part of a recorded tape's name (new_name)
NAME_CALL_ID_CHARS = 80


def tape_folder(tapes_dir: Path, when: float | datetime, name: str) -> Path:
    """Where the tape called ``name`` lies: ``tapes_dir/YYYY/MM/DD/name``, the day (UTC) of ``when``, a
    Unix time or a datetime (a naive one is taken as UTC)."""
    if isinstance(when, datetime):
        day = (when.astimezone(UTC) if when.tzinfo is not None else when).strftime(DAY_FORMAT)
    else:
        day = time.strftime(DAY_FORMAT, time.gmtime(when))
    return tapes_dir / day / name


def day_folders(tapes_dir: Path, folder: Path) -> list[Path]:
    """The folders between ``tapes_dir`` and the tape ``folder`` in it (its day, month and year), innermost
    first: what to fsync once a tape has appeared, so that it is on disk for good."""
    return [tapes_dir / p for p in folder.relative_to(tapes_dir).parents if p != Path(".")]


def new_name(call_id: str) -> str:
    """A recorded tape's name, ``<Call-ID made safe>-<8 random hex digits>``: unique even when a Call-ID
    comes back (the Call-ID part is at most ``NAME_CALL_ID_CHARS`` long, "call" when empty)."""
    return f"{safe_name(call_id, limit=NAME_CALL_ID_CHARS, empty='call')}-{secrets.token_hex(4)}"


def name_suffix(folder: Path) -> str:
    """What follows the last "-" in a tape folder's name: a recorded tape's random part (``new_name``);
    the whole name when it has no "-"."""
    return folder.name.rsplit("-", 1)[-1]


def info_files(tapes_dir: Path) -> list[Path]:
    """The ``call.json`` of every tape folder in the day folders under ``tapes_dir``, sorted by path."""
    return sorted(tapes_dir.glob(f"{_DAY_GLOB}/*/{META_FILE}"))


def find_named(tapes_dir: Path, name: str) -> list[Path]:
    """The folders called ``name`` in any day folder under ``tapes_dir``, sorted (tapes or not)."""
    return sorted(tapes_dir.glob(f"{_DAY_GLOB}/{name}"))


def is_tape(path: str | os.PathLike[str]) -> bool:
    """A folder holding both tape files."""
    folder = Path(path)
    return folder.is_dir() and (folder / MEDIA_FILE).is_file() and (folder / META_FILE).is_file()


def read_info(folder: str | os.PathLike[str]) -> CallInfo:
    """The call description of a tape; ``ParseError`` with one sentence when it is unreadable."""
    path = Path(folder) / META_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParseError(f"{path}: call.json is not readable JSON") from exc
    return CallInfo.from_json(data)


def quarantine(folder: Path, data_dir: Path, reason: str) -> Path | None:
    """Move a tape that cannot be read to ``data_dir/quarantine/`` (logged once, here) so that the sweeps
    that found it go on with the others; an operator can look at it there. None if it could not be moved."""
    target_dir = data_dir / QUARANTINE_DIR
    target = target_dir / folder.name
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        n = 0
        while target.exists():
            n += 1
            target = target_dir / f"{folder.name}.{n}"
        os.rename(folder, target)
    except OSError as exc:
        log.error("tape %s cannot be read (%s) nor moved aside: %s", folder.name, reason, exc.strerror or exc)
        return None
    log.error("tape %s cannot be read (%s): moved to %s/%s", folder.name, reason, QUARANTINE_DIR, target.name)
    return target


def quarantined(data_dir: Path) -> int:
    """How many tapes lie in ``data_dir/quarantine/``."""
    try:
        return sum(1 for _ in (data_dir / QUARANTINE_DIR).iterdir())
    except OSError:
        return 0


def write_info(folder: str | os.PathLike[str], info: CallInfo, *, durable: bool = True) -> None:
    """Replace ``call.json`` atomically, so a crash never leaves half a file; ``durable`` (the default)
    also flushes it to disk first, so a power cut does not lose it."""
    write_json(Path(folder) / META_FILE, info.to_json(), indent=2, durable=durable)


class TapeWriter:
    """Writes one call's tape: packets go to ``media.pcap`` as received, metadata to ``call.json``.

    ``call.json`` is always replaced atomically. With ``sync_open`` (the default) it is also flushed to disk
    when the tape opens and on every ``update``; without, only when the tape closes: a writer that opens
    many tapes on one thread (live capture: a burst of INVITEs) does not wait for the disk per call, and
    an open tape's media is not flushed to disk before it closes either."""

    def __init__(
        self, folder: str | os.PathLike[str], info: CallInfo, *, append: bool = False, sync_open: bool = True
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.info = info
        self._sync_open = sync_open
        self._pcap = PcapWriter(self.folder / MEDIA_FILE, append=append)
        self.packets = 0
        write_info(self.folder, info, durable=sync_open)

    def write(self, ts: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
        """Append one datagram as received at ``ts`` from ``src`` to ``dst`` (address, port)."""
        self._pcap.write(ts, pack_addr(src[0]), src[1], pack_addr(dst[0]), dst[1], payload)
        self.packets += 1

    def write_packed(self, ts: float, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> None:
        """``write`` with packed addresses (no conversion on the hot path)."""
        self._pcap.write(ts, src, sport, dst, dport, payload)
        self.packets += 1

    def flush(self) -> None:
        """Push buffered packets to the operating system (a crash of this process then loses nothing)."""
        self._pcap.flush()

    def update(self) -> None:
        """Flush media and rewrite ``call.json`` with the current ``info``."""
        self._pcap.flush()
        write_info(self.folder, self.info, durable=self._sync_open)

    def close(self, *, ended_at: float | None = None, cleanly: bool = True, durable: bool = True) -> None:
        """Close the tape; ``cleanly=False`` marks it interrupted; ``durable=False`` (a tape about to be
        deleted) leaves ``call.json`` to the operating system."""
        self._pcap.close()
        if ended_at is not None:
            self.info.ended_at = ended_at
        self.info.closed_cleanly = cleanly
        self.info.interrupted = not cleanly
        write_info(self.folder, self.info, durable=durable)
