"""The periodic sweep: the database, not the queue, decides what still has to run.

A message lost with a queue (a Redis flush, a killed worker that had taken it) leaves its recording
``queued`` past its time, or ``mixing``/``storing`` with a lease nobody renews; the sweep queues it again.
Queuing twice is harmless: a worker runs a recording only after claiming its row.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from callrec.db.engine import transaction
from callrec.db.schema import MIXING, QUEUED, STORING, Recording
from callrec.errors import CallrecError
from callrec.jobs import retention
from callrec.service.pipeline import Pipeline, pending_tapes

log = logging.getLogger("callrec.sweep")
BATCH = 1000


def requeue(pipeline: Pipeline) -> int:
    """Queue every recording that is due and not queued recently, or whose worker's lease ran out."""
    ctx = pipeline.ctx
    now = ctx.clock.now()
    stale = now - timedelta(seconds=ctx.config.requeue_after_s)
    expired = and_(Recording.state.in_((MIXING, STORING)), Recording.lease_until < now)
    waiting = and_(
        Recording.state == QUEUED,
        or_(Recording.next_attempt_at.is_(None), Recording.next_attempt_at <= now),
        or_(Recording.enqueued_at.is_(None), Recording.enqueued_at <= stale),
    )
    # while the queue still holds messages, a recording waiting its turn has not lost its message: only
    # an empty queue proves that a due recording's message is gone (a window opening has none at all)
    try:
        backlog = pipeline.queue.backlog()
    except Exception:  # noqa: BLE001 - a queue that cannot be asked is one to queue into again
        backlog = 0
    with transaction(ctx.sessions) as s:
        ids = list(
            s.scalars(select(Recording.id).where(or_(expired, waiting) if backlog == 0 else expired).limit(BATCH))
        )
        if ids:
            s.execute(update(Recording).where(Recording.id.in_(ids)).values(enqueued_at=now))
    for rec_id in ids:
        pipeline.queue.enqueue(rec_id)
    if ids:
        log.info("sweep queued %d recordings", len(ids))
    return len(ids)


def ingest_pending(pipeline: Pipeline) -> int:
    """Hand over closed tapes still on this machine's disk (storage was down, or the process stopped)."""
    done = 0
    for folder in pending_tapes(pipeline.ctx.config.data_dir / "tapes"):
        try:
            pipeline.tape_closed(folder)
            done += 1
        except CallrecError as exc:
            log.warning("tape %s: %s", folder, exc)
    return done


class Sweeper:
    """Runs the sweeps in a thread: re-queuing every ``sweep_interval_s``, retention less often."""

    def __init__(self, pipeline: Pipeline, *, tapes: bool = False, queue: bool = True) -> None:
        self.pipeline = pipeline
        self._tapes = tapes
        self._queue = queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="callrec-sweep", daemon=True)
        self._last_retention = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self, now_s: float) -> None:
        cfg = self.pipeline.ctx.config
        if self._tapes:
            ingest_pending(self.pipeline)
        if not self._queue:
            return
        requeue(self.pipeline)
        for extra in self.pipeline.sweeps:
            extra()
        if now_s - self._last_retention >= cfg.retention_interval_s:
            self._last_retention = now_s
            retention.sweep(self.pipeline.ctx, hook=self.pipeline.notify)

    def _run(self) -> None:
        import time

        interval = self.pipeline.ctx.config.sweep_interval_s
        while not self._stop.is_set():
            try:
                self.run_once(time.monotonic())
            except Exception:  # noqa: BLE001 - a database hiccup must not end the sweeping
                log.exception("sweep failed; trying again in %.0f s", interval)
            self._stop.wait(interval)
