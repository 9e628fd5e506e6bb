"""A domain's schedule changed: recordings still waiting for a window are planned again by the new one."""

from __future__ import annotations

from sqlalchemy import select

from callrec.db.schema import QUEUED, Domain, Recording
from callrec.service.domain_settings import load_settings
from callrec.service.pipeline import Service


def replan_waiting(service: Service, domain_id: int) -> int:
    """Give every recording of the domain that waits for its mixing window (queued, not yet due, never
    tried) the time the current schedule says: queued now when it is open (``immediate`` or inside a
    window), else at the new window's opening. A recording waiting to retry after a failure keeps its
    back-off. How many were planned again."""
    ctx = service.ctx
    now = ctx.clock.now()
    with ctx.sessions() as s:
        domain = s.get(Domain, domain_id)
        if domain is None:
            return 0
        settings = load_settings(s, domain)
        waiting = list(s.scalars(select(Recording.id).where(
            Recording.domain_id == domain_id, Recording.state == QUEUED, Recording.attempts == 0,
            Recording.next_attempt_at > now,
        )))  # fmt: skip
    for recording_id in waiting:
        service.pipeline.schedule(recording_id, settings)
    return len(waiting)
