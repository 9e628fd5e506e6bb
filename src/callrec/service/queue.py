"""The job queue: Huey on SQLite (one machine) or Redis (scale-out), chosen by ``CALLREC_QUEUE_URL``.

The queue only says "look at this recording now"; the database holds each recording's state, so a
message lost with a queue is found again by the sweep, and a message delivered twice does nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from huey import Huey, MemoryHuey, RedisHuey, SqliteHuey

from callrec.config import ConfigError, ServiceConfig

PROCESS_TASK = "callrec.process"


def make_huey(config: ServiceConfig) -> Huey:
    """The Huey instance ``config`` names (SqliteHuey under the data folder by default)."""
    url = config.queue_url
    if not url:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(config.queue_name, filename=str(config.data_dir / "queue.db"), results=False)
    if url.startswith(("redis://", "rediss://")):
        return RedisHuey(config.queue_name, url=url, results=False)
    if url.startswith("sqlite://"):
        path = Path(url.removeprefix("sqlite://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteHuey(config.queue_name, filename=str(path), results=False)
    if url.startswith("memory://"):
        return MemoryHuey(config.queue_name, results=False)
    raise ConfigError("CALLREC_QUEUE_URL must be a redis://, sqlite:// or memory:// URL")


class JobQueue:
    """Puts work on the queue; a worker's ``handler`` takes it off (see ``jobs.worker``).

    A message is a recording id (mix and store it), or ``kind:id`` for the other background work
    (``stitch:<stitch id>``, ``webhook:<delivery id>``); ``Pipeline.handlers`` says who runs each kind.
    """

    def __init__(self, huey: Huey, handler: Callable[[str], None] | None = None) -> None:
        self.huey = huey
        self._handler = handler
        # producers (recorder, API) register the same task name; only workers ever run it
        self._task: Any = huey.task(name=PROCESS_TASK)(self._run)

    def _run(self, recording_id: str) -> None:
        if self._handler is None:  # pragma: no cover - a producer-only process never consumes
            raise RuntimeError("this process has no job handler")
        self._handler(recording_id)

    def enqueue(self, recording_id: str, delay_s: float = 0.0) -> None:
        """Ask a worker to look at ``recording_id`` now (or after ``delay_s`` seconds)."""
        if delay_s > 0:
            self._task.schedule(args=(recording_id,), delay=delay_s)
        else:
            self._task(recording_id)

    def put(self, message: str, delay_s: float = 0.0) -> None:
        """Queue one message as ``leased`` names it: a recording id, or ``kind:id``."""
        self.enqueue(message, delay_s)

    def submit(self, kind: str, object_id: str, delay_s: float = 0.0) -> None:
        """Ask a worker to run ``kind``'s handler on ``object_id`` now (or after ``delay_s`` seconds)."""
        self.enqueue(f"{kind}:{object_id}", delay_s)

    def pending(self) -> int:
        """Messages waiting: ready to run, and scheduled for later (retries with back-off)."""
        return int(self.huey.pending_count()) + int(self.huey.scheduled_count())

    def backlog(self) -> int:
        """Messages ready to run that no worker has taken yet."""
        return int(self.huey.pending_count())

    def run_one(self) -> bool:
        """Run the next due message in this thread (tests); False when none is due.

        Messages for later (retries with back-off) go to Huey's schedule, as a consumer would put them.
        """
        while (task := self.huey.dequeue()) is not None:
            if self.huey.ready_to_run(task):
                self.huey.execute(task)
                return True
            self.huey.add_schedule(task)
        return False
