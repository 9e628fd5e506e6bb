"""One worker's run of a recording: claim it, mix its tape, store the file, record the outcome.

The mixed file stays in the work folder until storage has verified it, so a storage outage costs a
retry of the upload, not a second mix, and a local copy always exists until the stored one is proven.
"""

from __future__ import annotations

import errno
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, MIXING, QUEUED, STORING, Call, Domain, Job, Recording
from callrec.errors import CallrecError, EgressRefused, OutputError, Permanent, StorageError, Transient
from callrec.files import tape
from callrec.jobs.retention import delete_tape
from callrec.media.srtp_keys import SealedKeysError
from callrec.media_limits import OutputOptions
from callrec.mix import CallOutput, mix
from callrec.service import fairness, leased
from callrec.service.context import Context
from callrec.service.domain_settings import load_settings
from callrec.service.leased import LeaseLost
from callrec.service.pipeline import RECORDINGS, WAITING_FOR_TAPE, Pipeline
from callrec.service.retention import RetentionPolicy, expires_at, facts_of
from callrec.service.schedule import Schedule
from callrec.storage import keys
from callrec.storage.base import file_md5

log = logging.getLogger("callrec.worker")
# a domain's own S3 that keeps failing (down, refusing, unreachable) is given up on after this long: the
# recording fails with the reason (POST /calls/{id}/remix starts it again); an egress refusal at once
TENANT_STORAGE_PATIENCE_S = 6 * 3600.0


def run(pipeline: Pipeline, recording_id: str) -> None:
    ctx = pipeline.ctx
    if not _window_open(ctx, recording_id):
        return
    held = fairness.claim(ctx, RECORDINGS, recording_id, extra=_tape_reachable(ctx), requeue=pipeline.queue.put)
    if held is None:
        return
    try:
        job_id = _start_job(held)
        with held.heartbeat():
            _mix_and_store(pipeline, held, job_id)
    except LeaseLost as exc:
        log.warning("%s", exc)
        return
    except Exception as exc:  # noqa: BLE001 - the job runner is the one place that catches everything
        _failed(pipeline, held, exc)
    else:
        pipeline.notify("recording.completed", recording_id)
    log.debug("%s done on %s", recording_id, ctx.node)


def _tape_reachable(ctx: Context) -> Any:
    """Only a recording whose tape is in storage (or, on one machine, on this disk) can be mixed."""
    if ctx.single_host:
        return None
    return Recording.call_id.in_(select(Call.id).where(Call.tape_key != ""))


def _window_open(ctx: Context, recording_id: str) -> bool:
    """Whether the recording may run now: a queued one waits for its domain's window (a re-mix asked for
    through the API runs at once)."""
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        rec = s.get(Recording, recording_id)
        if rec is None or rec.state not in (QUEUED, MIXING, STORING):
            return False
        if rec.state != QUEUED or rec.options.get("asap"):
            return True
        domain = s.get(Domain, rec.domain_id)
        assert domain is not None
        opens = Schedule.from_json(load_settings(s, domain).schedule).next_open(now)
        if opens > now:
            rec.next_attempt_at = opens
            return False
    return True


def _start_job(held: leased.Claim) -> int:
    """The attempt's row in the job history; a job still "running" belonged to a worker that stopped."""
    ctx = held.ctx
    now = ctx.clock.now()
    with held.fenced() as s:
        for stale in s.scalars(select(Job).where(Job.recording_id == held.id, Job.state == "running")):
            stale.state, stale.finished_at = "failed", now
            stale.error = f"worker {stale.worker} stopped before finishing (its lease ran out)"
        rec = s.get(Recording, held.id)
        assert rec is not None
        job = Job(domain_id=rec.domain_id, recording_id=held.id, kind="mix", state="running",
                  attempt=held.attempts, worker=ctx.node, started_at=now)  # fmt: skip
        s.add(job)
        s.flush()
        return job.id


def _mix_and_store(pipeline: Pipeline, held: leased.Claim, job_id: int) -> None:
    ctx = pipeline.ctx
    recording_id = held.id
    with ctx.sessions() as s:
        rec = s.get(Recording, recording_id)
        assert rec is not None
        call = rec.call
        domain = s.get(Domain, rec.domain_id)
        assert domain is not None
        settings = load_settings(s, domain)
        output = OutputOptions.from_json(rec.options)
        # a capture may hold other calls beside this one: mix only this one
        sip_call_id = call.sip_call_id
        template = settings.storage.recording_template or keys.DEFAULT_RECORDING_TEMPLATE
        key = rec.storage_key or keys.domain_key(
            domain.id, template, when=call.started_at, domain=domain.name, call_id=call.sip_call_id or call.id,
            recording_id=rec.id, interaction=call.interaction_id or "none",
            direction=call.direction or "unknown", tape=call.tape_ref, ext=output.format,
        )  # fmt: skip
        tape_local, tape_key, tape_spec = call.tape_local, call.tape_key, dict(call.tape_storage)
        out_spec, known_md5 = dict(rec.storage), rec.md5
        facts = facts_of(call)
        policy = RetentionPolicy.from_json(settings.retention)
        keep_tape_days = settings.keep_tape_days
    work = ctx.config.work_dir
    out = work / f"{recording_id}{output.extension}"
    # mix, unless an earlier attempt already made the file and only its upload failed
    report: CallOutput | None = None
    if not (known_md5 and out.is_file() and file_md5(out)[1] == known_md5):
        report = _mix(ctx, tape_local, tape_key, tape_spec, out, output, sip_call_id)
    md5 = file_md5(out)[1]
    with held.fenced() as s:
        rec = s.get(Recording, recording_id)
        assert rec is not None
        rec.state, rec.md5, rec.storage_key, rec.updated_at = STORING, md5, key, ctx.clock.now()
        if report is not None:
            rec.duration_s, rec.bytes = report.duration_s, report.bytes
            _quality(rec.call, report.streams, report.speech)
        _finish_job(s, job_id, "done", "", ctx.clock.now())
        job = Job(domain_id=rec.domain_id, recording_id=recording_id, kind="store", state="running",
                  attempt=held.attempts, worker=ctx.node, started_at=ctx.clock.now())  # fmt: skip
        s.add(job)
        s.flush()
        store_job = job.id
    try:
        stored = ctx.storage(out_spec).put_file(key, out)
    except StorageError as exc:
        raise _storage_failed(out_spec, f"storing the recording failed: {exc}", exc) from exc
    if stored.md5 != md5:
        raise Transient(f"storage kept a different file for {key} (md5 {stored.md5}, sent {md5})")
    with held.fenced() as s:
        now = ctx.clock.now()
        rec = s.get(Recording, recording_id)
        assert rec is not None
        # a recording made anyway says what it lacks (SRTP it could not decrypt: silence there)
        rec.state, rec.bytes, rec.reason = COMPLETED, stored.size, "; ".join(report.reasons) if report else ""
        rec.completed_at = rec.updated_at = now
        rec.lease_until = None
        rec.expires_at = expires_at(policy, facts)
        if keep_tape_days is not None and rec.call.tape_expires_at is None:
            rec.call.tape_expires_at = now + timedelta(days=keep_tape_days)
        _finish_job(s, store_job, "done", "", now)
        call_id = rec.call_id
    out.unlink(missing_ok=True)
    if keep_tape_days == 0:
        delete_tape(ctx, call_id, "keep_tape_days is 0: the tape goes once its recording is stored")


def _mix(
    ctx: Context,
    tape_local: str,
    tape_key: str,
    tape_spec: dict[str, Any],
    out: Path,
    output: OutputOptions,
    sip_call_id: str | None,
) -> CallOutput:
    work = ctx.config.work_dir
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
            if not tape_key:  # still on the disk of the host that took it: its outbox delivers it
                raise Transient(WAITING_FOR_TAPE)
            source = scratch / "tape"
            storage = ctx.storage(tape_spec)
            try:
                for name in (tape.MEDIA_FILE, tape.META_FILE):
                    storage.download(f"{tape_key}/{name}", source / name)
            except StorageError as exc:
                if _disk_full(exc):
                    raise Transient(f"disk full while fetching the tape: {exc}") from exc
                raise _storage_failed(tape_spec, f"fetching the tape failed: {exc}", exc) from exc
            except OSError as exc:
                raise _os_error("fetching the tape", exc) from exc
        target = scratch / f"out{out.suffix}"
        try:
            report = mix(source, target, output, call_id=sip_call_id or None, box=ctx.box)
        except SealedKeysError as exc:
            raise Permanent(str(exc)) from exc  # the tape's keys were sealed with another secret: no retry opens them
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


class TenantStorageDown(Transient):
    """A domain's own S3 storage failed: retried like any storage outage, until it has failed for
    ``TENANT_STORAGE_PATIENCE_S`` (then the recording fails, saying why)."""


def _storage_failed(spec: dict[str, Any], message: str, exc: StorageError) -> CallrecError:
    """What a storage failure makes of the attempt: an egress refusal fails it at once; a domain's S3 is
    retried with bounded patience; the service's own storage is retried without limit."""
    if isinstance(exc, EgressRefused):
        return EgressRefused(message)
    if spec.get("kind") == "s3":
        return TenantStorageDown(message)
    return Transient(message)


def _patience(held: leased.Claim, exc: TenantStorageDown) -> CallrecError:
    """``exc``, or a ``Permanent`` error once this recording's storage attempts have been failing for
    longer than ``TENANT_STORAGE_PATIENCE_S`` (its jobs "retrying" since then)."""
    ctx = held.ctx
    with ctx.sessions() as s:
        first, count = s.execute(select(func.min(Job.started_at), func.count()).where(
            Job.recording_id == held.id, Job.state == "retrying")).one()  # fmt: skip
    now = ctx.clock.now()
    if first is None or (now - _aware(first)).total_seconds() < TENANT_STORAGE_PATIENCE_S:
        return exc
    hours = TENANT_STORAGE_PATIENCE_S / 3600
    return Permanent(f"{exc} (gave up: the domain's S3 storage kept failing for {hours:g} h, {count + 1} attempts)")


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _failed(pipeline: Pipeline, held: leased.Claim, exc: BaseException) -> None:
    """Back in the queue with back-off, or failed when the attempts are used up (never for a Transient)."""
    if isinstance(exc, TenantStorageDown):
        exc = _patience(held, exc)
    try:
        final, reason, _ = held.retry_or_fail(exc, pipeline.queue.put, also=_jobs_settled)
    except LeaseLost as lost:
        log.warning("%s", lost)
        return
    if final:
        pipeline.notify("recording.failed", held.id)


def _jobs_settled(s: Any, held: leased.Claim, final: bool, reason: str, next_at: datetime | None) -> None:
    now = held.ctx.clock.now()
    for job in s.scalars(select(Job).where(Job.recording_id == held.id, Job.state == "running")):
        job.state, job.error, job.finished_at = ("failed" if final else "retrying"), reason, now
        job.next_attempt_at = next_at


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
        srtp = [q for q in mine if "srtp_auth_failures" in q]
        if srtp:  # the party sent SRTP: what could not be decrypted
            for name in ("srtp_auth_failures", "srtp_replayed", "srtp_undecryptable"):
                row.quality[name] = sum(int(q.get(name, 0)) for q in srtp)
