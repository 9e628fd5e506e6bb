"""``callrec worker``: takes recordings off the queue, mixes and stores them, and sweeps."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from callrec.config import ServiceConfig
from callrec.context import Context
from callrec.jobs.pipeline import Hook, Pipeline
from callrec.jobs.queue import JobQueue, make_huey
from callrec.jobs.schedule import Clock
from callrec.jobs.sweep import Sweeper

log = logging.getLogger("callrec.worker")


@dataclass
class Service:
    """The pieces one process of the service needs, wired together."""

    ctx: Context
    queue: JobQueue
    pipeline: Pipeline

    def close(self) -> None:
        self.ctx.close()


def build(
    config: ServiceConfig, *, clock: Clock | None = None, hooks: list[Hook] | None = None, migrate: bool = True
) -> Service:
    """Context, queue and pipeline for ``config``; the queue's handler is the pipeline's ``process``."""
    ctx = Context.open(config, clock=clock, run_migrations=migrate)
    huey = make_huey(config)
    holder: list[Pipeline] = []
    queue = JobQueue(huey, handler=lambda rec_id: holder[0].process(rec_id))
    pipeline = Pipeline(ctx, queue, hooks)
    holder.append(pipeline)
    return Service(ctx, queue, pipeline)


def run_worker(config: ServiceConfig, *, workers: int | None = None, sweep: bool = True) -> None:
    """Run a Huey consumer with ``workers`` processes until SIGTERM/SIGINT, sweeping in a thread."""
    service = build(config)
    huey = service.queue.huey

    @huey.on_startup()  # type: ignore[untyped-decorator]
    def _fresh_connections() -> None:
        # a forked worker must not share the parent's database connections
        service.ctx.engine.dispose(close=False)

    sweeper = Sweeper(service.pipeline) if sweep else None
    if sweeper is not None:
        sweeper.start()
    consumer = huey.create_consumer(
        workers=workers or config.workers, worker_type="process", periodic=False, initial_delay=0.05,
        backoff=1.5, max_delay=0.5, check_worker_health=True, health_check_interval=1,
    )  # fmt: skip
    log.info("worker: %d processes on %s", workers or config.workers, config.queue_url or "sqlite")
    try:
        consumer.run()
    finally:
        if sweeper is not None:
            sweeper.stop()
        service.close()
