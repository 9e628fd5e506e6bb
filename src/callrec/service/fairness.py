"""A fair share of the mixing workers: one domain's burst cannot starve the others.

A recording is claimed only while its domain holds fewer than its share of rows in ``mixing`` or
``storing`` (with a live lease):

    share = max(1, ceil(workers / active domains))

``workers`` is the claiming node's ``CALLREC_WORKERS``; a domain is active when it has a recording
being mixed or stored, or one queued and due. With 4 workers and two active domains each may hold 2;
alone, a domain may hold all 4. A refused recording stays ``queued`` and its message goes back to the
queue after ``RETRY_S`` seconds (±20 %), so the worker goes on to the next message — another domain's
— at once, and the burst resumes as its own rows finish. The check and the claim are two statements:
two workers claiming for one domain at the same instant may overshoot its share by one, never more
than the workers racing.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

from sqlalchemy import ColumnElement, func, or_, select

from callrec.db.schema import MIXING, QUEUED, STORING, Recording
from callrec.service import leased
from callrec.service.context import Context

log = logging.getLogger("callrec.fairness")
RETRY_S = 2.0


def share(workers: int, active_domains: int) -> int:
    """How many rows one domain may hold in mixing/storing at once."""
    return max(1, math.ceil(max(1, workers) / max(1, active_domains)))


def over_share(ctx: Context, recording_id: str) -> bool:
    """Whether the recording's domain already holds its share of the workers."""
    now = ctx.clock.now()
    held = Recording.state.in_((MIXING, STORING)) & (Recording.lease_until >= now)
    due = (Recording.state == QUEUED) & or_(Recording.next_attempt_at.is_(None), Recording.next_attempt_at <= now)
    with ctx.sessions() as s:
        domain_id = s.scalar(select(Recording.domain_id).where(Recording.id == recording_id, Recording.state == QUEUED))
        if domain_id is None:
            return False
        mine = s.scalar(select(func.count()).select_from(Recording).where(held, Recording.domain_id == domain_id))
        if not mine:
            return False
        active = s.scalar(select(func.count(func.distinct(Recording.domain_id))).where(or_(held, due))) or 1
    return int(mine) >= share(ctx.config.workers, int(active))


def claim(
    ctx: Context, work: leased.Work, recording_id: str, *, extra: ColumnElement[bool] | None,
    requeue: Callable[[str, float], None],
) -> leased.Claim | None:  # fmt: skip
    """``leased.claim`` within the domain's fair share; over it, the message is queued again for later."""
    if over_share(ctx, recording_id):
        delay = RETRY_S * random.uniform(0.8, 1.2)
        if not leased.enqueue_or_leave(ctx, work, requeue, recording_id, delay):
            log.warning("recording %s waits for its domain's share; the sweep queues it", recording_id)
        return None
    return leased.claim(ctx, work, recording_id, extra=extra)
