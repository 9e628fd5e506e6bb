"""One worker's run of a stitch: claim the row, source each member's audio, stitch, store, record.

The row's ``signature`` is what the file is being made for; when ``request`` changes it mid-way (a member
changed), this run's result is thrown away at the end and the newer run, already queued, makes the file.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from callrec.db.queries import newest
from callrec.db.schema import COMPLETED, DELETED, FAILED, QUEUED, STORING, Stitch
from callrec.errors import OutputError, StorageError, Transient
from callrec.jobs import stitch_audio
from callrec.media.encode import open_writer
from callrec.media.stitch import Placement, stitch
from callrec.service import leased
from callrec.service.context import Context
from callrec.service.leased import LeaseLost
from callrec.service.pipeline import Pipeline
from callrec.service.stitches import (
    STITCHES,
    customers,
    domain_settings_of,
    members,
    pending,
    signature,
    waiting_reason,
)
from callrec.storage import keys
from callrec.storage.base import file_md5

log = logging.getLogger("callrec.stitch")


def run(pipeline: Pipeline, stitch_id: str) -> None:
    ctx = pipeline.ctx
    # a stitch waiting for its members has no next attempt: only a request or a member's hook starts it
    held = leased.claim(ctx, STITCHES, stitch_id, extra=(Stitch.state != QUEUED) | Stitch.next_attempt_at.is_not(None))
    if held is None:
        return
    try:
        with held.heartbeat():
            _make(held)
    except LeaseLost as exc:
        log.warning("%s", exc)
    except Exception as exc:  # noqa: BLE001 - the job runner is the one place that catches everything
        try:
            held.retry_or_fail(exc, pipeline.queue.put)
        except LeaseLost:  # a request queued it again meanwhile: that run goes on
            log.info("stitch %s was asked for again while it failed; the newer run goes on", stitch_id)


def _make(held: leased.Claim) -> None:
    ctx, stitch_id = held.ctx, held.id
    with held.fenced() as s:
        row = s.get(Stitch, stitch_id)
        assert row is not None
        domain, settings = domain_settings_of(s, row.domain_id)
        calls = members(s, row.domain_id, row.interaction_id)
        sig = signature(calls, settings)
        # this run makes the members as they are now, which may be newer than the request that queued it
        row.signature = sig
        waiting = pending(calls)
        if waiting:
            row.state, row.reason, row.next_attempt_at, row.lease_until = QUEUED, waiting_reason(waiting), None, None
            return
        usable = [(c, r) for c in calls if (r := newest(c)) is not None and r.state == COMPLETED]
        theirs = customers(calls) if calls else {}
        plan = [stitch_audio.member_of(c, r, theirs[c.id]) for c, r in usable]
        old_key, old_spec = row.storage_key, dict(row.storage)
        every_deleted = bool(calls) and all((r := newest(c)) is not None and r.state == DELETED for c in calls)
        spec = ctx.storage_spec(settings.storage)
        ident = hashlib_of(row.interaction_id)
        fmt, rate, bitrate, codec = settings.format, settings.rate, settings.bitrate, settings.codec
        key = f"{keys.domain_prefix(domain.id)}stitched/{domain.name}/{ident}/{stitch_id}-{sig[:12]}.{fmt}"
    if not plan:
        _nothing_left(held, sig, old_key, old_spec, every_deleted)
        return
    scratch = ctx.config.work_dir / f"stitch-{stitch_id}"
    stitch_audio.clear(scratch)
    try:
        try:
            scratch.mkdir(parents=True)
            pieces = [stitch_audio.piece_for(ctx, m, scratch, rate) for m in plan]
            out = scratch / f"stitched.{fmt}"
            channels = 1 if fmt == "wav" and codec == "gsm" else 2
            writer = open_writer(out, fmt=fmt, rate=rate, channels=channels, bitrate_kbps=bitrate, codec=codec)
            placements = stitch(pieces, writer, rate=rate, channels=channels)
        except OSError as exc:
            raise OutputError(f"stitching failed: {exc.strerror or exc}") from exc
        md5 = file_md5(out)[1]
        duration = max((p.start + p.frames for p in placements), default=0) / rate
        chapters = [_chapter(m, pieces[i].started_at, placements[i], rate) for i, m in enumerate(plan)]
        chapters.sort(key=lambda c: (c["from_s"], c["to_s"]))
        if not _set_state(held, sig, STORING):
            return
        try:
            stored = ctx.storage(spec).put_file(key, out)
        except StorageError as exc:
            raise Transient(f"storing the stitched recording failed: {exc}") from exc
        if stored.md5 != md5:
            raise Transient(f"storage kept a different file for {key} (md5 {stored.md5}, sent {md5})")
    finally:
        stitch_audio.clear(scratch)
    with held.fenced() as s:
        row = s.get(Stitch, stitch_id)
        current = row is not None and row.signature == sig and row.state == STORING
        if row is not None and current:
            row.state, row.reason, row.format, row.duration_s, row.bytes = COMPLETED, "", fmt, duration, stored.size
            row.md5, row.storage_key, row.storage, row.chapters = md5, key, spec, chapters
            row.completed_at = row.updated_at = ctx.clock.now()
            row.lease_until, row.next_attempt_at = None, None
    if not current:
        _delete(ctx, spec, key)  # a newer run makes the file for the members as they are now
    elif old_key and old_key != key:
        _delete(ctx, old_spec, old_key)


def hashlib_of(interaction_id: str) -> str:
    """A storage-safe name for an interaction id (which the PBX chose and may hold anything)."""
    return hashlib.sha256(interaction_id.encode()).hexdigest()[:20]


def _chapter(member: stitch_audio.Member, started_at: float, where: Placement, rate: int) -> dict[str, object]:
    start, end = where.seconds(rate)
    return {
        "call_id": member.call_id, "who": member.who, "from_s": round(start, 3), "to_s": round(end, 3),
        "started_at": datetime.fromtimestamp(started_at, UTC).isoformat(),
    }  # fmt: skip


def _set_state(held: leased.Claim, sig: str, state: str) -> bool:
    """Move the row on, unless a request changed what it is for (then the newer run takes over)."""
    with held.fenced() as s:
        row = s.get(Stitch, held.id)
        if row is None or row.signature != sig:
            return False
        row.state, row.updated_at = state, held.ctx.clock.now()
        return True


def _nothing_left(
    held: leased.Claim, sig: str, old_key: str, old_spec: dict[str, object], every_deleted: bool
) -> None:
    """No member has a recording: when they were all deleted, the stitched file goes too (retention)."""
    ctx, stitch_id = held.ctx, held.id
    if old_key:
        try:
            ctx.storage(dict(old_spec)).delete(old_key)
        except StorageError as exc:
            raise Transient(f"deleting the old stitched recording failed: {exc}") from exc
    with held.fenced() as s:
        row = s.get(Stitch, stitch_id)
        if row is None or row.signature != sig:
            return
        row.storage_key, row.bytes, row.md5, row.duration_s, row.chapters = "", 0, "", 0.0, []
        row.lease_until, row.next_attempt_at, row.updated_at = None, None, ctx.clock.now()
        if every_deleted:
            row.state, row.reason = DELETED, "every call's recording was deleted"
        else:
            row.state, row.reason = FAILED, "no call of the interaction has a completed recording"


def _delete(ctx: Context, spec: dict[str, object], key: str) -> None:
    try:
        ctx.storage(dict(spec)).delete(key)
    except StorageError as exc:
        log.warning("cannot delete the replaced stitched recording %s: %s", key, exc)
