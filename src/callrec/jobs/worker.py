"""``callrec worker``: takes recordings off the queue, mixes and stores them, and sweeps."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time

from sqlalchemy.orm import configure_mappers

from callrec.config import ServiceConfig
from callrec.jobs import steps, stitch, webhooks
from callrec.jobs.sweep import Sweeper
from callrec.service.context import Context
from callrec.service.disk import quiet_repeats
from callrec.service.pipeline import Hook, Pipeline, Service
from callrec.service.queue import JobQueue, make_huey
from callrec.service.schedule import Clock

log = logging.getLogger("callrec.worker")


def build(
    config: ServiceConfig, *, clock: Clock | None = None, hooks: list[Hook] | None = None, migrate: bool = True
) -> Service:
    """Context, queue and pipeline for ``config``; the queue's handler is the pipeline's ``process``."""
    ctx = Context.open(config, clock=clock, run_migrations=migrate)
    configure_mappers()  # now, in one thread, not lazily in several (or half-way through a fork)
    huey = make_huey(config)
    holder: list[Pipeline] = []
    queue = JobQueue(huey, handler=lambda rec_id: holder[0].process(rec_id))
    pipeline = Pipeline(ctx, queue, hooks)
    holder.append(pipeline)
    pipeline.handlers[""] = lambda recording_id: steps.run(pipeline, recording_id)
    stitch.install(pipeline)
    webhooks.install(pipeline)
    return Service(ctx, queue, pipeline)


def run_worker(config: ServiceConfig, *, workers: int | None = None, sweep: bool = True) -> None:
    """Run a Huey consumer with ``workers`` processes until SIGTERM/SIGINT, and the sweep beside it.

    The worker owns its data folder (or shares the lock ``serve`` handed down) and, owning it, clears the
    scratch that killed runs left in ``DATA/work``. The consumer forks its mixing processes (and forks
    again to replace one that dies), so this process starts no thread of its own: a lock held by a thread
    at a fork would stay held in the child forever. The sweep therefore runs in a process of its own,
    started fresh (spawn), not forked. Every process started here dies with this one.
    """
    from callrec.service.ownership import DataLock, clear_stale_scratch, forks_die_with_their_parent

    lock = DataLock.acquire(config.data_dir, "callrec worker")
    try:
        for folder in clear_stale_scratch(config.work_dir):
            log.info("removed %s, left by a run that was killed", folder)
        service = build(config)
        huey = service.queue.huey

        @huey.on_startup()  # type: ignore[untyped-decorator]
        def _fresh_connections() -> None:
            # a forked worker must not share the parent's database connections
            service.ctx.engine.dispose(close=False)

        # Huey forks its mixing processes and its scheduler from this (main) thread, at the start and to
        # replace one that dies: each gets its death signal right after the fork
        forks_die_with_their_parent()
        sweeper = multiprocessing.get_context("spawn").Process(
            target=run_sweeper, args=(config, os.getpid()), name="callrec-sweep", daemon=True
        )
        if sweep:
            sweeper.start()
        consumer = huey.create_consumer(
            workers=workers or config.workers, worker_type="process", periodic=False, initial_delay=0.05,
            # an idle worker looks at the queue every 50 ms at most: a single call's wait for a worker was
            # up to 0.5 s with Huey's default-like back-off (RedisHuey blocks on the queue anyway)
            backoff=1.2, max_delay=0.05, check_worker_health=True, health_check_interval=1,
        )  # fmt: skip
        # a queue that cannot be read (SqliteHuey on a full disk) fails every poll: logged once a minute
        quiet_repeats()
        print(f"callrec worker: {workers or config.workers} mixing processes on {config.queue_url or 'sqlite'}",
              file=sys.stderr, flush=True)  # fmt: skip
        try:
            consumer.run()
        finally:
            if sweeper.is_alive():
                sweeper.terminate()
                sweeper.join(10)
            service.close()
    finally:
        lock.release()


def run_sweeper(config: ServiceConfig, parent: int | None = None) -> None:
    """The sweep's own process: re-queue what is stuck, apply retention; ends with its parent."""
    from callrec.service.ownership import die_with_parent

    parent = os.getppid() if parent is None else parent
    die_with_parent(parent)  # SIGKILLed with the worker (Linux); the loop below checks it elsewhere
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the consumer's Ctrl-C is for the consumer
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = build(config, migrate=False)
    sweeper = Sweeper(service.pipeline)
    while os.getppid() == parent:
        wait = config.sweep_interval_s
        try:
            # sooner while the queue refuses messages: what waits is dispatched as soon as it is back
            wait = sweeper.run_once(time.monotonic())
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the sweeping
            log.warning("sweep failed (%s); trying again in %.0f s", exc, wait)
        time.sleep(wait)
