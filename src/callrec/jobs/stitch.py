"""The stitch job's place in the pipeline: its handler, the recording hook that remakes it, its sweep."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_

from callrec.db.schema import Recording, Stitch
from callrec.service import leased
from callrec.service.context import Context
from callrec.service.pipeline import Pipeline
from callrec.service.stitches import KIND, STITCHES, current, request


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
    waiting_for_members = Stitch.next_attempt_at.is_(None)
    where = or_(and_(leased.lost(STITCHES, ctx, ctx.config.requeue_after_s), ~waiting_for_members),
                leased.expired(STITCHES, ctx))  # fmt: skip
    return leased.requeue(ctx, STITCHES, pipeline.queue.put, where)[0]


def install(pipeline: Pipeline) -> None:
    """Register the stitch job's handler, its recording hook and its sweep on ``pipeline``."""
    from callrec.jobs.stitch_job import run

    pipeline.handlers[KIND] = lambda stitch_id: run(pipeline, stitch_id)
    pipeline.hooks.append(on_recording(pipeline))

    def requeue() -> None:
        sweep(pipeline)

    pipeline.sweeps.append(requeue)
