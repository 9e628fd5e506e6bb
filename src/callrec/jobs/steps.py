"""One worker's run of a recording: claim it, mix its tape, store the file, record the outcome.

The mixed file stays in the work folder until storage has verified it, so a storage outage costs a
retry of the upload, not a second mix, and a local copy always exists until the stored one is proven.
"""

from __future__ import annotations

import errno
import logging
import random
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update

from callrec import offline
from callrec.capture import tape
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, FAILED, MIXING, QUEUED, STORING, Domain, Job, Recording
from callrec.errors import CallrecError, OutputError, StorageError, Transient
from callrec.jobs.lease import Heartbeat
from callrec.jobs.retention import delete_tape
from callrec.service.retention import RetentionPolicy, expires_at, facts_of
from callrec.service.schedule import Schedule
from callrec.storage import keys
from callrec.storage.base import file_md5

if TYPE_CHECKING:
    from callrec.service.pipeline import Pipeline

log = logging.getLogger("callrec.worker")


def run(pipeline: Pipeline, recording_id: str) -> None:
    ctx = pipeline.ctx
    job_id = _claim(pipeline, recording_id)
    if job_id is None:
        return
    beat = Heartbeat(ctx, Recording, recording_id)
    beat.start()
    try:
        _mix_and_store(pipeline, recording_id, job_id)
    except Exception as exc:  # noqa: BLE001 - the job runner is the one place that catches everything
        _failed(pipeline, recording_id, job_id, exc)
    else:
        pipeline.notify("recording.completed", recording_id)
    finally:
        beat.stop()
    log.debug("%s done on %s", recording_id, ctx.node)


def _claim(pipeline: Pipeline, recording_id: str) -> int | None:
    """Take the recording if it is due (or its holder's lease ran out) and its window is open."""
    ctx = pipeline.ctx
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        rec = s.get(Recording, recording_id)
        if rec is None or rec.state not in (QUEUED, MIXING, STORING):
            return None
        domain = s.get(Domain, rec.domain_id)
        assert domain is not None
        settings = queries.load_settings(s, domain)
        opens = Schedule.from_json(settings.schedule).next_open(now)
        # a re-mix asked for through the API runs at once; the pipeline's own work waits for its window
        if rec.state == QUEUED and opens > now and not rec.options.get("asap"):
            rec.next_attempt_at = opens
            return None
        claimed = s.execute(
            update(Recording)
            .where(Recording.id == recording_id)
            .where(
                or_(
                    (Recording.state == QUEUED)
                    & or_(Recording.next_attempt_at.is_(None), Recording.next_attempt_at <= now),
                    Recording.state.in_((MIXING, STORING)) & (Recording.lease_until < now),
                )
            )
            .values(
                state=MIXING, lease_until=now + timedelta(seconds=ctx.config.lease_s), worker=ctx.node,
                attempts=Recording.attempts + 1, updated_at=now,
            )  # fmt: skip
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        s.refresh(rec)
        # a job still "running" here belonged to a worker that died (its lease ran out)
        for stale in s.scalars(select(Job).where(Job.recording_id == recording_id, Job.state == "running")):
            stale.state, stale.finished_at = "failed", now
            stale.error = f"worker {stale.worker} stopped before finishing (its lease ran out)"
        job = Job(domain_id=rec.domain_id, recording_id=recording_id, kind="mix", state="running",
                  attempt=rec.attempts, worker=ctx.node, started_at=now)  # fmt: skip
        s.add(job)
        s.flush()
        return job.id


def _mix_and_store(pipeline: Pipeline, recording_id: str, job_id: int) -> None:
    ctx = pipeline.ctx
    with ctx.sessions() as s:
        rec = s.get(Recording, recording_id)
        assert rec is not None
        call = rec.call
        domain = s.get(Domain, rec.domain_id)
        assert domain is not None
        settings = queries.load_settings(s, domain)
        opts = dict(rec.options)
        # a capture may hold other calls beside this one: mix only this one
        opts["sip_call_id"] = call.sip_call_id
        template = settings.storage.recording_template or keys.DEFAULT_RECORDING_TEMPLATE
        key = rec.storage_key or keys.render_key(
            template, when=call.started_at, domain=domain.name, call_id=call.sip_call_id or call.id,
            recording_id=rec.id, interaction=call.interaction_id or "none",
            direction=call.direction or "unknown", tape=call.tape_ref, ext=opts.get("format", "mp3"),
        )  # fmt: skip
        tape_local, tape_key, tape_spec = call.tape_local, call.tape_key, dict(call.tape_storage)
        out_spec, known_md5 = dict(rec.storage), rec.md5
        facts = facts_of(call)
        policy = RetentionPolicy.from_json(settings.retention)
        keep_tape_days = settings.keep_tape_days
    work = ctx.config.work_dir
    out = work / f"{recording_id}.{opts.get('format', 'mp3')}"
    # mix, unless an earlier attempt already made the file and only its upload failed
    report: offline.CallOutput | None = None
    if not (known_md5 and out.is_file() and file_md5(out)[1] == known_md5):
        report = _mix(ctx.config.work_dir, tape_local, tape_key, tape_spec, pipeline, out, opts)
    md5 = file_md5(out)[1]
    with transaction(ctx.sessions) as s:
        rec = s.get(Recording, recording_id)
        assert rec is not None
        rec.state, rec.md5, rec.storage_key, rec.updated_at = STORING, md5, key, ctx.clock.now()
        if report is not None:
            rec.duration_s, rec.bytes = report.duration_s, report.bytes
            _quality(rec.call, report.streams, report.speech)
        _finish_job(s, job_id, "done", "", ctx.clock.now())
        job = Job(domain_id=rec.domain_id, recording_id=recording_id, kind="store", state="running",
                  attempt=rec.attempts, worker=ctx.node, started_at=ctx.clock.now())  # fmt: skip
        s.add(job)
        s.flush()
        store_job = job.id
    try:
        stored = ctx.storage(out_spec).put_file(key, out)
    except StorageError as exc:
        raise Transient(f"storing the recording failed: {exc}") from exc
    if stored.md5 != md5:
        raise Transient(f"storage kept a different file for {key} (md5 {stored.md5}, sent {md5})")
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        rec = s.get(Recording, recording_id)
        assert rec is not None
        rec.state, rec.bytes, rec.reason = COMPLETED, stored.size, ""
        rec.completed_at = rec.updated_at = now
        rec.lease_until = None
        rec.expires_at = expires_at(policy, facts)
        if keep_tape_days is not None and rec.call.tape_expires_at is None:
            rec.call.tape_expires_at = now + timedelta(days=keep_tape_days)
        _finish_job(s, store_job, "done", "", now)
    out.unlink(missing_ok=True)
    if keep_tape_days == 0:
        delete_tape(ctx, rec.call_id, "keep_tape_days is 0: the tape goes once its recording is stored")


def _mix(
    work: Path, tape_local: str, tape_key: str, tape_spec: dict[str, Any], pipeline: Pipeline, out: Path,
    opts: dict[str, Any],
) -> offline.CallOutput:
    ctx = pipeline.ctx
    # one scratch folder per recording: what a killed attempt left there is cleared by the next one
    scratch = work / f"mix-{out.stem}"
    try:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    except OSError as exc:
        raise _os_error("preparing the work folder", exc) from exc
    try:
        source = Path(tape_local) if tape_local and tape.is_tape(tape_local) else None
        if source is None and tape_key:
            # a tape in a local folder storage is mixed where it lies, not copied
            found = ctx.storage(tape_spec).local_path(f"{tape_key}/{tape.MEDIA_FILE}")
            source = found.parent if found is not None and tape.is_tape(found.parent) else None
        if source is None:
            if not tape_key:
                raise CallrecError("the tape is neither on this machine nor in storage")
            source = scratch / "tape"
            storage = ctx.storage(tape_spec)
            try:
                for name in (tape.MEDIA_FILE, tape.META_FILE):
                    storage.download(f"{tape_key}/{name}", source / name)
            except StorageError as exc:
                if _disk_full(exc):
                    raise Transient(f"disk full while fetching the tape: {exc}") from exc
                raise Transient(f"fetching the tape failed: {exc}") from exc
            except OSError as exc:
                raise _os_error("fetching the tape", exc) from exc
        mix_opts = offline.MixOptions(
            fmt=str(opts.get("format", "mp3")), codec=str(opts.get("codec", "pcm")),
            bitrate_kbps=int(opts.get("bitrate", 16)), rate=int(opts.get("rate", 8000)),
            call_id=str(opts["sip_call_id"]) if opts.get("sip_call_id") else None,
        )  # fmt: skip
        target = scratch / f"out{out.suffix}"
        try:
            report = offline.mix(source, target, mix_opts)
        except OutputError as exc:
            if _disk_full(exc):
                raise Transient(f"disk full while mixing: {exc}") from exc
            raise
        except OSError as exc:
            raise _os_error("mixing", exc) from exc
        made = [c for c in report.calls if c.output is not None]
        if not made:
            errors = "; ".join(c.error for c in report.calls if c.error) or "no call with media in the tape"
            raise CallrecError(f"nothing to mix: {errors}")
        call = made[0]
        try:
            shutil.move(str(call.output), out)
        except OSError as exc:
            raise _os_error("saving the mixed file", exc) from exc
        return call
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left" in str(exc).lower():
            return True
        exc = exc.__cause__
    return False


def _os_error(doing: str, exc: OSError) -> CallrecError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Transient(f"disk full while {doing}: {exc.strerror}")
    return CallrecError(f"{doing} failed: {exc.strerror or exc}")


def _failed(pipeline: Pipeline, recording_id: str, job_id: int, exc: BaseException) -> None:
    """Put the recording back in the queue with back-off, or mark it failed when retries are used up."""
    from callrec.service.pipeline import backoff_s

    ctx = pipeline.ctx
    now = ctx.clock.now()
    reason = str(exc) if isinstance(exc, CallrecError) else f"{type(exc).__name__}: {exc}"
    transient = isinstance(exc, Transient)
    with transaction(ctx.sessions) as s:
        rec = s.get(Recording, recording_id)
        if rec is None:
            return
        final = not transient and rec.attempts >= ctx.config.max_attempts
        delay = backoff_s(ctx, rec.attempts) * random.uniform(0.9, 1.1)
        rec.reason, rec.updated_at, rec.lease_until = reason, now, None
        if final:
            rec.state, rec.next_attempt_at = FAILED, None
        else:
            rec.state, rec.next_attempt_at, rec.enqueued_at = QUEUED, now + timedelta(seconds=delay), now
        for job in s.query(Job).filter(Job.recording_id == recording_id, Job.state == "running"):
            job.state, job.error, job.finished_at = ("failed" if final else "retrying"), reason, now
            job.next_attempt_at = None if final else rec.next_attempt_at
    log.warning("recording %s: %s (%s)", recording_id, reason, "failed" if final else f"retry in {delay:.1f} s")
    if final:
        pipeline.notify("recording.failed", recording_id)
    else:
        pipeline.queue.enqueue(recording_id, delay_s=delay)


def _finish_job(s: Any, job_id: int, state: str, error: str, now: datetime) -> None:
    job = s.get(Job, job_id)
    if job is not None:
        job.state, job.error, job.finished_at = state, error, now


def _quality(call: Any, streams: list[dict[str, Any]], speech: dict[str, list[list[float]]]) -> None:
    for row in call.streams:
        mine = [q for q in streams if q.get("party") == row.party]
        row.quality = {
            # who spoke when: the party's speaking segments in the recording's time
            "speech": speech.get(row.party, []),
            "packets": sum(int(q.get("packets", 0)) for q in mine),
            "lost": sum(int(q.get("lost", 0)) for q in mine),
            "late": sum(int(q.get("late", 0)) for q in mine),
            "max_jitter_ms": max((float(q.get("max_jitter_ms", 0.0)) for q in mine), default=0.0),
            "ssrcs": mine,
        }
