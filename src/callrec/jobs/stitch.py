"""The stitch job's place in the pipeline: its handler, the recording hook that remakes it, its sweep."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update

from callrec.db.engine import transaction
from callrec.db.schema import MIXING, QUEUED, STORING, Recording, Stitch
from callrec.service.context import Context
from callrec.service.pipeline import Pipeline
from callrec.service.stitches import BATCH, KIND, current, request


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
