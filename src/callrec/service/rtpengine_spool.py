"""rtpengine's spool as a source of calls: each finished pcap-method recording becomes a tape.

rtpengine (``recording-method = pcap``) leaves per call ``SPOOL/pcaps/<x>.pcap`` and, once the call is
over, ``SPOOL/metadata/rtpengine-meta-<x>.txt`` (``callrec.files.rtpengine``). The watcher turns each
such pair into a tape folder under ``DATA/tapes/`` exactly as the SIPREC recorder leaves a closed one:
``media.pcap`` (rtpengine's pcap as it is) and ``call.json`` (source ``rtpengine``).

When the spool's files are removed: once the tape is *stored* as the recorder's own tapes are. Alone
(``callrec record``) that is the tape folder written and fsynced. With the service, it is also the call
registered in the database (``Pipeline.tape_closed``): from then on the tape in ``DATA/tapes/`` is the
outbox's to deliver to remote storage, with its retries, exactly like a SIPREC tape whose upload waits
(``service.outbox``); the spool's copy adds nothing to that.

Idempotent: the tape folder's name is made from the spool file's name, and the call is found by it
(``Call.tape_ref``), so a crash between writing the tape and removing the spool files never makes a
second call. A folder is written under ``tapes/.rtpengine/`` and renamed into place, so a tape folder
under its final name is always whole. A recording whose files cannot be read is moved to
``SPOOL/failed/`` with a ``.reason`` file and one log line, and never tried again.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from callrec.config import ConfigError, RecorderConfig
from callrec.db import queries
from callrec.errors import CallrecError
from callrec.files import rtpengine, tape
from callrec.files.pcap import CaptureReader
from callrec.models import CallInfo
from callrec.names import SAFE_CHARS, safe_name
from callrec.service.pipeline import Pipeline

log = logging.getLogger("callrec.rtpengine_spool")

POLL_S = 1.0
FAILED_DIR = "failed"
REASON_SUFFIX = ".reason"
# under DATA/tapes: where a tape is put together before it is renamed into place (not a day folder, so
# neither the outbox nor anything else that looks for tapes sees it half-written)
STAGING_DIR = ".rtpengine"
# a finished recording that cannot be read yet is given this long (from its metadata file's last change)
# before it is set aside as damaged: its pcap may still be on its way
GRACE_S = 10.0
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0


def check_spools(spools: Sequence[Path], what: str = "--rtpengine-spool") -> None:
    """Refuse (``ConfigError``, one sentence) a spool folder that does not exist or whose finished
    recordings this process could not remove."""
    for spool in spools:
        if not spool.is_dir():
            raise ConfigError(f"{what}: {spool}: no such folder (rtpengine's recording-dir)")
        for sub in (spool, spool / rtpengine.METADATA_DIR, spool / rtpengine.PCAPS_DIR):
            if sub.is_dir() and not os.access(sub, os.R_OK | os.W_OK | os.X_OK):
                raise ConfigError(
                    f"{what}: {sub}: this user may not remove files there (recordings would never leave the spool)"
                )


def tape_name(metadata: Path) -> str:
    """The tape folder's name for the recording whose metadata file is ``metadata``: rtpengine's
    ``<callid>-<16 hex>``, so that the same recording always gets the same name. When that holds a
    character outside ``[A-Za-z0-9._-]`` (a Call-ID's ``%40``) or is too long, those become ``_`` and a
    digest of the whole name replaces the tail, so two recordings never share a name."""
    stem = metadata.name.removeprefix(rtpengine.META_PREFIX).removesuffix(".txt")
    if len(stem) <= tape.NAME_CALL_ID_CHARS + 20 and all(c in SAFE_CHARS for c in stem) and stem[:1] not in ("", "."):
        return stem
    call_part = stem.rpartition("-")[0] or stem
    safe = safe_name(call_part, limit=tape.NAME_CALL_ID_CHARS, dots="strip", empty="call")
    return f"{safe}-{hashlib.sha256(stem.encode()).hexdigest()[:16]}"


@dataclass(slots=True)
class _Retry:
    failures: int
    due: float


class Damaged(CallrecError):
    """A finished recording whose files cannot be made into a tape: set aside, not tried again."""


class SpoolWatcher:
    """Turns the finished recordings of rtpengine spool folders into tapes, in a thread of its own.

    ``pipeline``: hand each tape to the service (the call is registered before the spool's files go);
    without it the tapes stay under ``tapes_dir`` like the recorder's. ``on_tape`` is called with each
    new tape folder (``callrec record --mix``). ``run_once`` does one round, for tests.
    """

    def __init__(
        self,
        spools: Sequence[Path],
        tapes_dir: Path,
        *,
        pipeline: Pipeline | None = None,
        domain_key: str = "domain",
        interaction_key: str = "interaction",
        on_tape: Callable[[Path], object] | None = None,
        poll_s: float = POLL_S,
        grace_s: float = GRACE_S,
    ) -> None:
        self.spools = list(spools)
        self.tapes_dir = tapes_dir
        self.pipeline = pipeline
        self.domain_key, self.interaction_key = domain_key, interaction_key
        self.on_tape = on_tape
        self.poll_s, self.grace_s = poll_s, grace_s
        self.taken = 0
        self.failed = 0
        self._retry: dict[Path, _Retry] = {}
        self._given_up: set[Path] = set()
        self._missing: set[Path] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="callrec-rtpengine", daemon=True)

    @classmethod
    def for_recorder(
        cls, cfg: RecorderConfig, *, pipeline: Pipeline | None = None, on_tape: Callable[[Path], object] | None = None
    ) -> SpoolWatcher:
        return cls(
            cfg.rtpengine_spools, cfg.tapes_dir, pipeline=pipeline, domain_key=cfg.rtpengine_domain_key,
            interaction_key=cfg.rtpengine_interaction_key, on_tape=on_tape,
        )  # fmt: skip

    def start(self) -> None:
        for spool in self.spools:
            log.info("taking finished rtpengine recordings from %s", spool)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def run_once(self, now_s: float | None = None) -> int:
        """One round over every spool: how many recordings became tapes (and left the spool)."""
        now_s = time.monotonic() if now_s is None else now_s
        done = 0
        for spool in self.spools:
            for metadata in self._finished(spool):
                if self._stop.is_set():
                    return done
                retry = self._retry.get(metadata)
                if metadata in self._given_up or (retry is not None and retry.due > now_s):
                    continue
                if self._one(spool, metadata, now_s):
                    done += 1
        return done

    # --- one round's parts --------------------------------------------------------------------------

    def _finished(self, spool: Path) -> list[Path]:
        """The metadata files in ``spool/metadata/`` (rtpengine renames one there when its call is over)."""
        if not spool.is_dir():
            if spool not in self._missing:
                self._missing.add(spool)
                log.warning("rtpengine spool %s is gone; its recordings wait until it is back", spool)
            return []
        if spool in self._missing:
            self._missing.discard(spool)
            log.info("rtpengine spool %s is back", spool)
        try:
            entries = list(os.scandir(spool / rtpengine.METADATA_DIR))
        except FileNotFoundError:
            return []  # rtpengine has not finished a recording here yet
        except OSError as exc:
            self._note_failure(spool, f"cannot list {spool / rtpengine.METADATA_DIR}: {exc.strerror or exc}")
            return []
        found = [
            Path(e.path) for e in entries
            if e.name.startswith(rtpengine.META_PREFIX) and e.name.endswith(".txt") and e.is_file()
        ]  # fmt: skip
        return sorted(found)

    def _one(self, spool: Path, metadata: Path, now_s: float) -> bool:
        """Make one recording a tape and clear it from the spool; whether it left the spool."""
        try:
            fd = os.open(metadata, os.O_RDONLY)
        except FileNotFoundError:
            return False  # another process took it meanwhile
        except OSError as exc:
            self._note_failure(metadata, f"cannot open it: {exc.strerror or exc}", now_s)
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # another process on this spool is taking it
            if not metadata.exists():
                return False
            return self._take(spool, metadata, now_s)
        finally:
            os.close(fd)

    def _take(self, spool: Path, metadata: Path, now_s: float) -> bool:
        name = tape_name(metadata)
        try:
            if not self._stored(name):
                rec, info = self._read(metadata)
                folder = self._write(rec, info, name)
                if self.pipeline is not None:
                    call_id = self.pipeline.tape_closed(folder)
                    log.info("rtpengine recording %s is call %s (tape %s)", metadata.name, call_id, folder.name)
                else:
                    log.info("rtpengine recording %s is tape %s", metadata.name, folder)
                if self.on_tape is not None:
                    self.on_tape(folder)
            self._clear(spool, metadata)
        except Damaged as exc:
            if _age_s(metadata) < self.grace_s:
                self._note_failure(metadata, str(exc), now_s, quiet=True)
                return False
            self._set_aside(spool, metadata, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - the database or disk is away: the spool keeps it, we retry
            self._note_failure(metadata, _one_line(exc), now_s)
            return False
        self._retry.pop(metadata, None)
        self.taken += 1
        return True

    def _stored(self, name: str) -> bool:
        """Whether this recording's tape is already stored: the call registered (service), or the tape
        folder whole under ``tapes/`` (alone)."""
        if self.pipeline is not None:
            with self.pipeline.ctx.sessions() as s:
                return queries.call_by_tape(s, name) is not None
        return any(tape.is_tape(p) for p in tape.find_named(self.tapes_dir, name))

    def _read(self, metadata: Path) -> tuple[rtpengine.SpoolRecording, CallInfo]:
        """The recording and its call; ``Damaged`` when its files are not an rtpengine recording."""
        try:
            rec = rtpengine.locate(metadata)
            info = rtpengine.call_info(rec, domain_key=self.domain_key, interaction_key=self.interaction_key)
        except (CallrecError, ValueError, UnicodeError) as exc:
            raise Damaged(_one_line(exc).removeprefix(f"{metadata}: ")) from exc
        try:
            with CaptureReader(rec.pcap):
                pass  # a capture a tape reader opens (pcap or pcapng), not garbage or an empty file
        except CallrecError as exc:
            raise Damaged(f"its pcap: {_one_line(exc).removeprefix(f'{rec.pcap}: ')}") from exc
        # the domain as for a SIPREC call from a trusted source: the one named, else "default" (the service
        # files a domain it does not know into "default")
        info.domain = rec.pairs.get(self.domain_key, "").strip() or "default"
        info.interaction_id = info.interaction_id.strip()
        info.source = rtpengine.SOURCE
        info.closed_cleanly, info.interrupted = True, False
        return rec, info

    def _write(self, rec: rtpengine.SpoolRecording, info: CallInfo, name: str) -> Path:
        """The tape folder, whole and on disk (fsynced) under its final name; one written before is kept."""
        # in the day folder of the day the call started (UTC), as SIPREC tapes are laid out
        folder = tape.tape_folder(self.tapes_dir, info.started_at if info.started_at is not None else time.time(), name)
        if tape.is_tape(folder):
            return folder  # written by an earlier round that did not get to clear the spool
        staging = self.tapes_dir / STAGING_DIR / name
        if staging.exists():
            shutil.rmtree(staging)  # half of a tape a crash left
        staging.mkdir(parents=True, mode=0o700)
        media = staging / tape.MEDIA_FILE
        shutil.copyfile(rec.pcap, media)
        os.chmod(media, 0o600)
        _fsync(media)
        tape.write_info(staging, info)
        _fsync(staging)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, folder)
        except OSError:
            if not tape.is_tape(folder):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process put the same tape there first
        for parent in (*tape.day_folders(self.tapes_dir, folder), staging.parent):
            _fsync(parent)
        return folder

    def _clear(self, spool: Path, metadata: Path) -> None:
        """Remove the recording's files: the pcap first, the metadata last (while it is there, the next
        round finds the recording and, its tape stored, clears it again)."""
        stem = metadata.name.removeprefix(rtpengine.META_PREFIX).removesuffix(".txt")
        (spool / rtpengine.PCAPS_DIR / f"{stem}.pcap").unlink(missing_ok=True)
        metadata.unlink(missing_ok=True)

    def _set_aside(self, spool: Path, metadata: Path, reason: str) -> None:
        """Move a damaged recording's files to ``SPOOL/failed/`` with its reason: one log line, no retry."""
        self._given_up.add(metadata)
        self._retry.pop(metadata, None)
        self.failed += 1
        stem = metadata.name.removeprefix(rtpengine.META_PREFIX).removesuffix(".txt")
        failed = spool / FAILED_DIR
        try:
            failed.mkdir(exist_ok=True)
            for path in (spool / rtpengine.PCAPS_DIR / f"{stem}.pcap", metadata):
                if path.exists():
                    os.rename(path, _free_name(failed / path.name))
            _free_name(failed / f"{stem}{REASON_SUFFIX}").write_text(reason + "\n", "utf-8")
        except OSError as exc:
            log.error(
                "rtpengine recording %s is damaged (%s) and cannot be moved aside: %s; it is left in the spool",
                metadata.name, reason, exc.strerror or exc,
            )  # fmt: skip
            return
        self._given_up.discard(metadata)  # gone from metadata/: a new file of that name is a new recording
        log.error("rtpengine recording %s is damaged (%s): moved to %s", metadata.name, reason, failed)

    def _note_failure(self, what: Path, reason: str, now_s: float | None = None, *, quiet: bool = False) -> None:
        """A failure that may pass (storage, database, a file on its way): try again later, with back-off;
        logged at the first failure and then at each doubling of their number."""
        now_s = time.monotonic() if now_s is None else now_s
        retry = self._retry.get(what, _Retry(0, 0.0))
        retry.failures += 1
        retry.due = now_s + min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** min(retry.failures - 1, 10))
        self._retry[what] = retry
        if not quiet and retry.failures & (retry.failures - 1) == 0:
            log.warning("rtpengine recording %s stays in the spool for now (failure %d): %s",
                        what.name, retry.failures, reason)  # fmt: skip

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - a hiccup must not end the watching
                log.warning("rtpengine spool round failed: %s", _one_line(exc))
            self._stop.wait(self.poll_s)


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _free_name(path: Path) -> Path:
    n, candidate = 0, path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _fsync(path: Path) -> None:
    """Make a file's content, or a folder's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
