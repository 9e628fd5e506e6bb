"""The per-call pipeline: tape closed → (tape stored) → mix → store → notify.

``Pipeline.tape_opened``/``tape_closed`` run where the tape was written (the recorder, or the API for an
upload); ``Pipeline.process`` runs on a worker. Every step is idempotent: the recording's row is claimed
with a conditional UPDATE and a lease, output keys are fixed per recording, so running a step twice
still makes one recording.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import update

from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import FAILED, MIXING, QUEUED, RECORDING, STORING, Call, Domain, Recording
from callrec.errors import CallrecError, ParseError, StorageError
from callrec.files import tape
from callrec.service import leased
from callrec.service.context import Context
from callrec.service.domain_settings import DomainSettings, ensure_domain, load_settings
from callrec.service.queue import JobQueue
from callrec.service.schedule import Schedule
from callrec.storage import keys

log = logging.getLogger("callrec.pipeline")

WAITING_FOR_TAPE = "waiting for the tape to reach storage"


def _recording_backoff(ctx: Context) -> leased.Backoff:
    cfg = ctx.config
    return leased.Backoff(cfg.backoff_base_s, cfg.backoff_max_s, cfg.max_attempts, jitter=0.1)


# a recording: mixed from its tape and stored; its queue message is its bare id
RECORDINGS = leased.Work(
    name="recording", model=Recording, ready=QUEUED, held=(MIXING, STORING), failed=FAILED,
    message=lambda recording_id: recording_id, backoff=_recording_backoff, lease_s=lambda ctx: ctx.config.lease_s,
)  # fmt: skip

# a hook runs after a recording completes, fails or is deleted: (context, event, recording id)
Hook = Callable[[Context, str, str], None]


class Pipeline:
    """Moves each call from its tape to a stored recording; see the module docstring."""

    def __init__(self, ctx: Context, queue: JobQueue, hooks: list[Hook] | None = None) -> None:
        self.ctx = ctx
        self.queue = queue
        self.hooks = hooks if hooks is not None else []
        # the other background work a queue message can name (``kind:id``): kind -> handler(id)
        self.handlers: dict[str, Callable[[str], None]] = {}
        # extra sweeps (re-queue lost stitch and webhook messages), run with the recordings' own
        self.sweeps: list[Callable[[], None]] = []

    # --- where the tape is written -----------------------------------------------------------------

    def tape_opened(self, folder: Path) -> None:
        """A recording started: the call appears with state ``recording``."""
        info, extra = _read_tape(folder)
        now = self.ctx.clock.now()
        with transaction(self.ctx.sessions) as s:
            domain = _domain_for(s, info.domain, now)
            call = queries.call_from_info(s, info, extra, domain, folder.name, now)
            call.tape_local = str(folder.resolve())
            if not call.recordings:
                s.add(_new_recording(self.ctx, call, load_settings(s, domain), RECORDING, now))

    def tape_closed(self, folder: Path) -> str:
        """Register a closed tape, put it in storage and queue its mixing; returns the call's id.

        Safe to repeat: a tape ingested before is found by its folder name. Once the call is committed
        nothing here raises for an outage: when storage is down the tape stays on this host's disk (the
        outbox delivers it later) and its recording waits for it; when the queue is down the recording
        is left to the sweep. A recording is dispatched only once its tape can be read by every worker.
        """
        info, extra = _read_tape(folder)
        now = self.ctx.clock.now()
        with transaction(self.ctx.sessions) as s:
            domain = _domain_for(s, info.domain, now)
            settings = load_settings(s, domain)
            call = queries.call_from_info(s, info, extra, domain, folder.name, now)
            call.tape_local = str(folder.resolve())
            rec = next((r for r in call.recordings if r.state in (RECORDING, QUEUED)), None)
            if rec is None and not call.recordings:
                rec = _new_recording(self.ctx, call, settings, QUEUED, now)
                s.add(rec)
            if rec is not None and rec.state == RECORDING:
                rec.state = QUEUED
                rec.updated_at = now
            if rec is not None and not call.tape_key and not self.ctx.single_host:
                rec.reason = WAITING_FOR_TAPE
            call_id, stored = call.id, bool(call.tape_key)
            spec = self.ctx.storage_spec(settings.storage)
            key = keys.domain_key(
                domain.id, settings.storage.tape_template or keys.DEFAULT_TAPE_TEMPLATE,
                when=call.started_at, domain=domain.name, tape=folder.name, call_id=info.call_id or call.id,
                recording_id=rec.id if rec is not None else "", interaction=info.interaction_id or "none",
                direction=call.direction or "unknown", ext="pcap",
            )  # fmt: skip
        if not stored:
            self.store_tape(call_id, folder, spec, key)
        elif folder.is_dir():  # stored before, by a hand-off that stopped before removing the folder
            shutil.rmtree(folder, ignore_errors=True)
        self.dispatch_call(call_id)
        return call_id

    def store_tape(self, call_id: str, folder: Path, spec: dict[str, Any], key: str) -> bool:
        """Put a tape's two files in storage (verified, or renamed into a local one), then drop the local
        folder; one upload of a tape at a time on this host (another process holding it: False)."""
        with tape_lock(folder) as mine:
            if not mine or not folder.is_dir():
                return False
            moved = spec.get("kind", "local") == "local" and self._move_into_local_storage(folder, key)
            storage = self.ctx.storage(spec)
            try:
                if not moved:
                    for name in (tape.MEDIA_FILE, tape.META_FILE):
                        storage.put_file(f"{key}/{name}", folder / name)
            except StorageError as exc:
                log.warning("tape %s stays on local disk for now: %s", folder.name, exc)
                return False
            now = self.ctx.clock.now()
            with transaction(self.ctx.sessions) as s:
                call = s.get(Call, call_id)
                if call is not None:
                    call.tape_key, call.tape_storage, call.tape_local = key, spec, ""
                # the tape is readable by every worker now: whatever waited for it runs (a recording
                # failed for the want of it gets a fresh set of attempts)
                s.execute(
                    update(Recording)
                    .where(Recording.call_id == call_id, Recording.state.in_((QUEUED, FAILED)))
                    .values(state=QUEUED, reason="", attempts=0, next_attempt_at=None, updated_at=now)
                )
            if not moved:
                shutil.rmtree(folder, ignore_errors=True)
        return True

    def _move_into_local_storage(self, folder: Path, key: str) -> bool:
        """A tape bound for the local folder storage on the same file system is renamed there: instant,
        atomic, and nothing to verify (the bytes do not move). False when that cannot be done."""
        dest = self.ctx.config.storage_dir / key
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, dest)
        except OSError:
            return False
        return True

    def dispatch_call(self, call_id: str) -> None:
        """Schedule the call's queued recordings whose tape every worker can read."""
        with self.ctx.sessions() as s:
            call = s.get(Call, call_id)
            if call is None or not (call.tape_key or (self.ctx.single_host and call.tape_local)):
                return
            domain = s.get(Domain, call.domain_id)
            assert domain is not None
            settings = load_settings(s, domain)
            ids = [r.id for r in call.recordings if r.state == QUEUED]
        for rec_id in ids:
            self.schedule(rec_id, settings)

    def schedule(self, recording_id: str, settings: DomainSettings) -> None:
        """Queue now if the domain's schedule is open, else note when its next window opens.

        A queue that is down is not an error here: the recording is due, and the sweep queues it."""
        now = self.ctx.clock.now()
        opens = Schedule.from_json(settings.schedule).next_open(now)
        with transaction(self.ctx.sessions) as s:
            rec = s.get(Recording, recording_id)
            if rec is None or rec.state != QUEUED:
                return
            if rec.options.get("asap"):  # a re-mix someone asked for does not wait for the window
                opens = now
            rec.next_attempt_at = opens
            rec.enqueued_at = None
        if opens <= now:
            leased.enqueue_or_leave(self.ctx, RECORDINGS, self.queue.put, recording_id)

    # --- on a worker --------------------------------------------------------------------------------

    def process(self, message: str) -> None:
        """Run one queue message: a recording id (mix and store it, if due and nobody holds it), or
        ``kind:id`` for a registered handler."""
        kind, sep, object_id = message.partition(":")
        if not sep:  # a bare id is a recording's: the mixing job registers itself under ""
            kind, object_id = "", message
        handler = self.handlers.get(kind)
        if handler is None:
            log.warning("no handler for queue message %r; dropped", message[:80])
            return
        handler(object_id)

    def notify(self, event: str, recording_id: str) -> None:
        for hook in self.hooks:
            try:
                hook(self.ctx, event, recording_id)
            except Exception:  # noqa: BLE001 - a hook's failure must not undo a stored recording
                log.exception("hook %s failed for %s", getattr(hook, "__name__", hook), recording_id)


def _read_tape(folder: Path) -> tuple[Any, dict[str, Any]]:
    info = tape.read_info(folder)
    try:
        extra = json.loads((folder / tape.META_FILE).read_text("utf-8"))
    except (OSError, ValueError) as exc:  # read_info succeeded a moment ago; the folder went away
        raise ParseError(f"{folder}: call.json is not readable JSON") from exc
    return info, extra if isinstance(extra, dict) else {}


def _domain_for(s: Any, name: str, now: datetime) -> Any:
    """The tape's domain if it is known, else ``default`` (which always exists)."""
    return queries.domain_by_name(s, name) or ensure_domain(s, queries.DEFAULT_DOMAIN, now)


def _new_recording(ctx: Context, call: Call, settings: DomainSettings, state: str, now: datetime) -> Recording:
    options = settings.output.to_json()
    return Recording(
        id=queries.new_id(), call_id=call.id, domain_id=call.domain_id, state=state, options=options,
        format=settings.format, storage=ctx.storage_spec(settings.storage), created_at=now, updated_at=now,
    )  # fmt: skip


@contextmanager
def tape_lock(folder: Path) -> Iterator[bool]:
    """Whether this process may deliver the tape now: an exclusive, non-blocking lock on the tape's
    folder, so that the hand-off, the outbox and another process on the same data folder never upload
    one tape twice at once. The kernel drops it with the process."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield False  # gone: delivered meanwhile
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def pending_tapes(tapes_dir: Path, min_age_s: float = 2.0, bad: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Closed tapes still on local disk: not yet in storage (after a storage outage or a restart).

    Tapes closed in the last ``min_age_s`` are left to the hand-off that is surely busy with them. A tape
    whose call.json cannot be read is added to ``bad`` with the reason (when given) and left out.
    """
    found: list[Path] = []
    if not tapes_dir.is_dir():
        return found
    newest = time.time() - min_age_s
    for meta in tape.info_files(tapes_dir):
        try:
            if meta.stat().st_mtime > newest:
                continue
        except OSError:
            continue
        try:
            info = tape.read_info(meta.parent)
        except CallrecError as exc:
            if bad is not None:
                bad.append((meta.parent, str(exc).removeprefix(f"{meta}: ")))
            continue
        if info.closed_cleanly or info.interrupted:
            found.append(meta.parent)
    return found


@dataclass
class Service:
    """The pieces one process of the service needs, wired together (see ``jobs.worker.build``)."""

    ctx: Context
    queue: JobQueue
    pipeline: Pipeline

    def close(self) -> None:
        self.ctx.close()
