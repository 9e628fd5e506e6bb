"""Stitching an interaction's calls into one recording, as a background job with a cached result.

A ``Stitch`` row per (domain, interaction) holds the signature of the member recordings it was made
from. ``request`` compares it with the members as they are now and queues a remake when they differ;
the recording hook does the same whenever a member's recording completes, fails or is deleted, so a
stitch follows its calls (a new call joining, a re-mix, retention). The worker claims the row with a
conditional UPDATE and a lease like a recording, makes the file in its work folder, stores it under a
new key (verified by MD5), and only then deletes the object it replaces.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from callrec.context import Context
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import (
    MIXING,
    QUEUED,
    RECORDING,
    STORING,
    Call,
    Domain,
    Recording,
    Stitch,
)  # fmt: skip
from callrec.domain_settings import DomainSettings
from callrec.errors import ServiceError
from callrec.jobs import stitch_audio
from callrec.jobs.pipeline import Pipeline
from callrec.jobs.queue import JobQueue

log = logging.getLogger("callrec.stitch")
KIND = "stitch"
PENDING = (RECORDING, QUEUED, MIXING, STORING)
BATCH = 500


# --- what a stitch is made of ----------------------------------------------------------------------


def members(s: Session, domain_id: int, interaction_id: str) -> list[Call]:
    """The interaction's calls in time order (calls still being recorded included)."""
    if not interaction_id:
        return []
    query = select(Call).where(Call.domain_id == domain_id, Call.interaction_id == interaction_id)
    return list(s.scalars(query.order_by(Call.started_at, Call.id)))


def current(s: Session, domain_id: int, interaction_id: str) -> Stitch | None:
    """The interaction's stitch row, whatever its state."""
    return s.scalar(select(Stitch).where(Stitch.domain_id == domain_id, Stitch.interaction_id == interaction_id))


def newest(call: Call) -> Recording | None:
    """The call's current recording: the newest, ties broken by id as the API does."""
    return max(call.recordings, key=lambda r: (r.created_at, r.id), default=None)


def signature(calls: list[Call], settings: DomainSettings) -> str:
    """What the stitch is made from: each member's current recording and the output settings."""
    parts: list[Any] = [settings.format, settings.codec, settings.bitrate, settings.rate]
    for call in calls:
        rec = newest(call)
        done = rec.completed_at.isoformat() if rec is not None and rec.completed_at else ""
        parts.append([call.id, rec.id if rec else "", rec.state if rec else "", done])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def pending(calls: list[Call]) -> int:
    """How many members are not finished yet (recording, or their recording still being made)."""
    return sum(1 for c in calls if (r := newest(c)) is not None and r.state in PENDING)


def customer_json(calls: list[Call]) -> dict[str, str]:
    """The customer as the first call names them."""
    if not calls:
        return {}
    labels = stitch_audio.customers(calls)[calls[0].id]
    party = next((p for p in calls[0].parties if p.label in labels), None)
    if party is None:
        return {}
    return {"label": party.label, "number": party.number, "name": party.name, "uri": party.uri}


def waiting_reason(n: int) -> str:
    return f"waiting for {n} call{'s' if n != 1 else ''}"


def domain_settings_of(s: Session, domain_id: int) -> tuple[Domain, DomainSettings]:
    domain = s.get(Domain, domain_id)
    if domain is None:
        raise ServiceError("no such domain", 404)
    return domain, queries.load_settings(s, domain)


# --- asking for one --------------------------------------------------------------------------------


def request(ctx: Context, queue: JobQueue, domain_id: int, interaction_id: str, *, force: bool = False) -> Stitch:
    """Make sure a stitch matching the interaction's calls exists or is on its way; returns its row.

    ``force`` makes it again even when nothing changed (and after a failure).
    """
    for attempt in range(2):
        try:
            row, submit = _request(ctx, domain_id, interaction_id, force)
            break
        except IntegrityError:  # another request made the row at the same moment: use that one
            if attempt:
                raise
    if submit:
        queue.submit(KIND, row.id)
    return row


def _request(ctx: Context, domain_id: int, interaction_id: str, force: bool) -> tuple[Stitch, bool]:
    now = ctx.clock.now()
    with transaction(ctx.sessions) as s:
        calls = members(s, domain_id, interaction_id)
        if not calls:
            raise ServiceError(f"no interaction {interaction_id[:60]!r}", 404)
        _, settings = domain_settings_of(s, domain_id)
        sig = signature(calls, settings)
        row = current(s, domain_id, interaction_id)
        if row is None:
            row = Stitch(id=queries.new_id(), domain_id=domain_id, interaction_id=interaction_id, state=QUEUED,
                         created_at=now, updated_at=now, storage={}, chapters=[])  # fmt: skip
            s.add(row)
        elif row.signature == sig and not force:
            return row, False
        row.signature, row.state, row.attempts, row.reason, row.updated_at = sig, QUEUED, 0, "", now
        row.lease_until = None
        waiting = pending(calls)
        if waiting:
            # the hook asks again when a member's recording completes
            row.reason, row.next_attempt_at = waiting_reason(waiting), None
            s.flush()
            return row, False
        row.next_attempt_at = row.enqueued_at = now
        s.flush()
        return row, True


def on_recording(pipeline: Pipeline) -> Any:
    """The pipeline hook: a member's recording changed, so a stitch of its interaction is remade."""

    def hook(ctx: Context, event: str, recording_id: str) -> None:
        with ctx.sessions() as s:
            rec = s.get(Recording, recording_id)
            if rec is None or not rec.call.interaction_id:
                return
            domain_id, interaction_id = rec.domain_id, rec.call.interaction_id
            if current(s, domain_id, interaction_id) is None:
                return  # nobody asked for this interaction's stitch: nothing to keep up to date
        request(ctx, pipeline.queue, domain_id, interaction_id)

    hook.__name__ = "stitch_hook"
    return hook


def sweep(pipeline: Pipeline) -> int:
    """Queue again every stitch that is due and was not queued recently, or whose worker's lease ran out."""
    ctx = pipeline.ctx
    now = ctx.clock.now()
    stale = now - timedelta(seconds=ctx.config.requeue_after_s)
    due = and_(
        Stitch.state == QUEUED, Stitch.next_attempt_at <= now,
        or_(Stitch.enqueued_at.is_(None), Stitch.enqueued_at <= stale),
    )  # fmt: skip
    expired = and_(Stitch.state.in_((MIXING, STORING)), Stitch.lease_until < now)
    with transaction(ctx.sessions) as s:
        ids = list(s.scalars(select(Stitch.id).where(or_(due, expired)).limit(BATCH)))
        if ids:
            s.execute(update(Stitch).where(Stitch.id.in_(ids)).values(enqueued_at=now))
    for stitch_id in ids:
        pipeline.queue.submit(KIND, stitch_id)
    return len(ids)


def install(pipeline: Pipeline) -> None:
    """Register the stitch job's handler, its recording hook and its sweep on ``pipeline``."""
    from callrec.jobs.stitch_job import run

    pipeline.handlers[KIND] = lambda stitch_id: run(pipeline, stitch_id)
    pipeline.hooks.append(on_recording(pipeline))

    def requeue() -> None:
        sweep(pipeline)

    pipeline.sweeps.append(requeue)
