"""The periodic sweep: the database, not the queue, decides what still has to run.

A message lost with a queue (a Redis flush, a killed worker that had taken it) leaves its recording
``queued`` past its time, or ``mixing``/``storing`` with a lease nobody renews; the sweep queues it again.
Queuing twice is harmless: a worker runs a recording only after claiming its row.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import and_, or_, select

from callrec.db.schema import Call, Recording
from callrec.jobs import retention
from callrec.service import leased
from callrec.service.pipeline import RECORDINGS, Pipeline

log = logging.getLogger("callrec.sweep")
BATCH = 1000


def requeue(pipeline: Pipeline) -> int:
    """Queue every recording that is due, reachable and not queued recently, or whose worker's lease ran
    out. -1 when the queue refused some (it is down): the sweep comes back sooner."""
    ctx = pipeline.ctx
    expired = leased.expired(RECORDINGS, ctx)
    waiting = leased.lost(RECORDINGS, ctx, ctx.config.requeue_after_s)
    if not ctx.single_host:  # a tape still on another host's disk: nothing to mix yet (its outbox is on it)
        waiting = and_(waiting, Recording.call_id.in_(select(Call.id).where(Call.tape_key != "")))
    # while the queue still holds messages, a recording waiting its turn has not lost its message: only
    # an empty queue proves that a due recording's message is gone (a window opening has none at all)
    try:
        backlog = pipeline.queue.backlog()
    except Exception:  # noqa: BLE001 - a queue that cannot be asked is one to queue into again
        backlog = 0
    where = or_(expired, waiting) if backlog == 0 else expired
    sent, complete = leased.requeue(ctx, RECORDINGS, pipeline.queue.put, where)
    return sent if complete else -1


# while the queue refuses messages, the sweep comes back this often: work is dispatched within seconds
# of the queue's return, not a whole sweep interval later
QUEUE_DOWN_RETRY_S = 1.0


class Sweeper:
    """Runs the sweeps in a thread: re-queuing every ``sweep_interval_s``, retention less often."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="callrec-sweep", daemon=True)
        self._last_retention = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self, now_s: float) -> float:
        """One round of every sweep; the seconds to wait before the next round."""
        cfg = self.pipeline.ctx.config
        queue_down = requeue(self.pipeline) < 0
        for extra in self.pipeline.sweeps:
            extra()
        if now_s - self._last_retention >= cfg.retention_interval_s:
            self._last_retention = now_s
            retention.sweep(self.pipeline.ctx, hook=self.pipeline.notify)
        return min(cfg.sweep_interval_s, QUEUE_DOWN_RETRY_S) if queue_down else cfg.sweep_interval_s

    def _run(self) -> None:
        import time

        interval = self.pipeline.ctx.config.sweep_interval_s
        while not self._stop.is_set():
            wait = interval
            try:
                wait = self.run_once(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the sweeping
                log.warning("sweep failed (%s); trying again in %.0f s", exc, interval)
            self._stop.wait(wait)
