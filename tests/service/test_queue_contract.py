"""The contract both job-queue backends pass: SqliteHuey (embedded, ``queue.db`` in the data folder) and
RedisHuey (distributed, a real Redis on 127.0.0.1:6379), each built by ``make_huey`` as the service builds it.

What callrec relies on, and nothing more (``service/queue.py``, ``service/leased.py``, ``jobs/sweep.py``,
``jobs/worker.py``, ``api/handlers.py``):
- a message reaches the handler exactly as it was put: a recording id, or ``kind:id``;
- producers (recorder, API, another process) and workers share a queue through its URL and name only; a
  queue of another name is another queue;
- each message is taken by one worker only, and a handler's failure does not bring it back (retries are the
  database's, through the sweep);
- ``delay_s`` holds a message back until its time (the back-off of retries); ``pending()`` counts it while
  it waits, ``backlog()`` does not once a worker has set it aside (the sweep's "is the queue empty?");
- a queue out of reach refuses with an error the API answers 503 for (and ``leased`` catches), instead of
  taking the message and losing it; once back, the same queue object takes messages again.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callrec.api.handlers import _QUEUE_DOWN
from callrec.config import ServiceConfig
from callrec.service.queue import JobQueue, make_huey
from tests.service.backends import REDIS_URL, redis_queue
from tests.support.faultproxy import FaultProxy

# RedisHuey waits a second on an empty queue: slow (`make test-fast` runs SqliteHuey)
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.slow)]
RECORDING = "3f2a9c1e0b7d4e59a6c8d1f0e2b3a4c5"
# how long a test waits for something a worker does at once; never a bound on how fast it is
PATIENCE_S = 30.0


@dataclass
class QueueBackend:
    name: str
    config: ServiceConfig

    def queue(self, handler: Callable[[str], None] | None = None) -> JobQueue:
        """A JobQueue as a process of the service builds it (a fresh Huey: another process's view)."""
        return JobQueue(make_huey(self.config), handler)

    def renamed(self, queue_name: str) -> QueueBackend:
        return QueueBackend(self.name, replace(self.config, queue_name=queue_name))

    def through(self, proxy: FaultProxy) -> QueueBackend:
        """The same Redis queue reached through ``proxy`` (which can refuse the connection)."""
        return QueueBackend(self.name, replace(self.config, queue_url=f"redis://127.0.0.1:{proxy.port}/0"))


@pytest.fixture(params=BACKENDS)
def queue_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueBackend]:
    data = tmp_path / "data"
    if request.param == "sqlite":  # the embedded default: no CALLREC_QUEUE_URL
        yield QueueBackend("sqlite", ServiceConfig(data_dir=data))
        return
    with redis_queue() as (url, name):
        yield QueueBackend("redis", ServiceConfig(data_dir=data, queue_url=url, queue_name=name))


class Taken:
    """A handler that notes every message it is given (from any thread)."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.messages: list[str] = []
        self.fail_on = fail_on
        self.changed = threading.Condition()

    def __call__(self, message: str) -> None:
        with self.changed:
            self.messages.append(message)
            self.changed.notify_all()
        if message == self.fail_on:
            raise RuntimeError(f"the handler failed on {message}")

    def wait_for(self, count: int) -> list[str]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.messages) >= count, timeout=PATIENCE_S)
            return list(self.messages)


def drain(queue: JobQueue, limit: int = 100) -> int:
    ran = 0
    while ran < limit and queue.run_one():
        ran += 1
    return ran


def huey_now() -> datetime:
    """Now as Huey keeps its times (naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


# --- delivery --------------------------------------------------------------------------------------


def test_every_kind_of_message_reaches_the_handler_as_it_was_put(queue_backend: QueueBackend) -> None:
    taken = Taken()
    queue = queue_backend.queue(taken)
    queue.put(RECORDING)
    queue.submit("stitch", "41")
    queue.put("webhook:d-7f3a:with:colons")
    queue.enqueue("ünïcode-id ✓")
    assert drain(queue) == 4
    assert sorted(taken.messages) == sorted([RECORDING, "stitch:41", "webhook:d-7f3a:with:colons", "ünïcode-id ✓"])
    assert queue.run_one() is False, "nothing is left once every message ran"
    assert (queue.pending(), queue.backlog()) == (0, 0)


def test_a_producer_and_a_worker_share_the_queue_by_url_and_name_only(queue_backend: QueueBackend) -> None:
    producer = queue_backend.queue()  # the recorder or the API: no handler
    producer.put(RECORDING)
    producer.submit("webhook", "d-1")
    taken = Taken()
    worker = queue_backend.queue(taken)
    assert worker.backlog() == 2, "the worker's view of the queue holds what the producer put"
    assert drain(worker) == 2
    assert sorted(taken.messages) == sorted([RECORDING, "webhook:d-1"])
    assert producer.backlog() == 0, "taken by the worker means gone for the producer too"


@pytest.mark.slow
def test_a_message_from_another_process_reaches_a_worker_started_later(queue_backend: QueueBackend) -> None:
    cfg = queue_backend.config
    script = (
        "import sys; from pathlib import Path\n"
        "from callrec.config import ServiceConfig\n"
        "from callrec.service.queue import JobQueue, make_huey\n"
        "cfg = ServiceConfig(data_dir=Path(sys.argv[1]), queue_url=sys.argv[2], queue_name=sys.argv[3])\n"
        "JobQueue(make_huey(cfg)).put(sys.argv[4])\n"
    )
    subprocess.run([sys.executable, "-c", script, str(cfg.data_dir), cfg.queue_url, cfg.queue_name, RECORDING],
                   check=True, timeout=PATIENCE_S)  # fmt: skip
    taken = Taken()
    assert drain(queue_backend.queue(taken)) == 1
    assert taken.messages == [RECORDING]


def test_a_queue_of_another_name_is_another_queue(queue_backend: QueueBackend) -> None:
    queue_backend.queue().put(RECORDING)
    other_taken = Taken()
    other = queue_backend.renamed(f"{queue_backend.config.queue_name}-other").queue(other_taken)
    try:
        assert (other.pending(), other.run_one()) == (0, False)
        assert other_taken.messages == []
        taken = Taken()
        assert drain(queue_backend.queue(taken)) == 1 and taken.messages == [RECORDING]
    finally:
        if queue_backend.name == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(f"huey.*{other.huey.name}*"):
                client.delete(key)


def test_each_message_is_taken_by_one_worker_only(queue_backend: QueueBackend) -> None:
    producer = queue_backend.queue()
    sent = [f"{RECORDING[:-2]}{i:02d}" for i in range(12)]
    for message in sent:
        producer.put(message)
    first, second = Taken(), Taken()
    workers = [queue_backend.queue(first), queue_backend.queue(second)]
    turn = 0
    while workers[turn % 2].run_one() or workers[(turn + 1) % 2].run_one():
        turn += 1
    assert sorted(first.messages + second.messages) == sorted(sent), "every message once, none twice"
    assert first.messages and second.messages, "both workers took from the one queue"


def test_a_message_whose_handler_failed_is_not_delivered_again(queue_backend: QueueBackend) -> None:
    taken = Taken(fail_on="bad")
    queue = queue_backend.queue(taken)
    queue.put("bad")
    queue.put(RECORDING)
    assert drain(queue) == 2, "a failing handler does not stop the worker"
    assert sorted(taken.messages) == sorted(["bad", RECORDING])
    assert (queue.pending(), queue.run_one()) == (0, False), "the queue does not retry: the sweep does"


# --- delay ------------------------------------------------------------------------------------------


def test_a_delayed_message_waits_for_its_time_counted_as_pending_not_as_backlog(queue_backend: QueueBackend) -> None:
    taken = Taken()
    queue = queue_backend.queue(taken)
    before = huey_now()
    queue.put(RECORDING, delay_s=60.0)
    queue.submit("webhook", "d-2", delay_s=60.0)
    assert queue.pending() == 2
    assert queue.run_one() is False, "not due: a worker sets it aside"
    assert taken.messages == []
    assert (queue.pending(), queue.backlog()) == (2, 0), "waiting for its time: pending, not backlog"
    huey = queue.huey
    assert huey.read_schedule(before + timedelta(seconds=59)) == [], "not due before its delay"
    due = huey.read_schedule(before + timedelta(seconds=61, milliseconds=500))
    assert sorted(task.args for task in due) == sorted([(RECORDING,), ("webhook:d-2",)])
    for task in due:  # as the consumer's scheduler does once the time has come
        huey.execute(task, timestamp=before + timedelta(seconds=61, milliseconds=500))
    assert sorted(taken.messages) == sorted([RECORDING, "webhook:d-2"])
    assert queue.pending() == 0


@pytest.mark.slow
def test_a_worker_runs_a_delayed_message_after_its_delay(queue_backend: QueueBackend) -> None:
    taken = Taken()
    worker = queue_backend.queue(taken)
    # as run_worker builds it (threads instead of processes, to see the handler's calls)
    consumer = worker.huey.create_consumer(workers=1, worker_type="thread", periodic=False, initial_delay=0.05,
                                           backoff=1.2, max_delay=0.05)  # fmt: skip
    consumer.start()
    try:
        queue_backend.queue().put(RECORDING, delay_s=3.0)  # a margin no loaded machine needs to start a worker
        queue_backend.queue().put("stitch:now")
        assert taken.wait_for(1) == ["stitch:now"], "the message without delay runs first"
        assert taken.wait_for(2) == ["stitch:now", RECORDING]
    finally:
        consumer.stop(graceful=True)
    assert worker.pending() == 0


# --- out of reach -----------------------------------------------------------------------------------


def _refusals(queue: JobQueue) -> dict[str, type[Exception] | None]:
    """What each call the service makes raises on ``queue`` (None: it did not raise)."""
    calls: dict[str, Callable[[], object]] = {
        "put": lambda: queue.put(RECORDING),
        "put with delay": lambda: queue.put(RECORDING, delay_s=5.0),
        "submit": lambda: queue.submit("stitch", "41"),
        "backlog": queue.backlog,
        "pending": queue.pending,
    }
    raised: dict[str, type[Exception] | None] = {}
    for name, call in calls.items():
        try:
            call()
            raised[name] = None
        except Exception as exc:  # noqa: BLE001 - what is raised is the point
            raised[name] = type(exc)
    return raised


def _assert_refused(raised: dict[str, type[Exception] | None]) -> None:
    not_raised = [name for name, kind in raised.items() if kind is None]
    assert not_raised == [], f"{not_raised} did not fail while the queue was out of reach"
    unknown = {name: kind for name, kind in raised.items() if kind is not None and not issubclass(kind, _QUEUE_DOWN)}
    assert unknown == {}, "errors the API would answer 500 for, not 503 'the job queue'"


def test_a_queue_out_of_reach_refuses_every_call_and_takes_messages_once_back(queue_backend: QueueBackend) -> None:
    with ExitStack() as stack:
        if queue_backend.name == "redis":
            proxy = stack.enter_context(FaultProxy("127.0.0.1", 6379, http=False))
            proxy.set_mode("refuse")
            backend = queue_backend.through(proxy)
            taken = Taken()
            queue = backend.queue(taken)

            def back() -> None:
                proxy.set_mode("pass")
        else:
            taken = Taken()
            queue = queue_backend.queue(taken)
            db = queue_backend.config.data_dir / "queue.db"
            kept = db.read_bytes()
            db.unlink()
            db.mkdir()  # the file cannot be opened (SQLite answers as for a full or unreadable disk)

            def back() -> None:
                db.rmdir()
                db.write_bytes(kept)

        _assert_refused(_refusals(queue))
        back()
        assert queue.pending() == 0, "a refused message was not kept either (the database row holds the work)"
        queue.put(RECORDING)
        assert drain(queue) == 1 and taken.messages == [RECORDING]


@pytest.mark.slow  # SQLite gives up on a busy file after its 5 s busy timeout
def test_a_queue_that_goes_out_of_reach_while_in_use_refuses_then_recovers(queue_backend: QueueBackend) -> None:
    with ExitStack() as stack:
        taken = Taken()
        if queue_backend.name == "redis":
            proxy = stack.enter_context(FaultProxy("127.0.0.1", 6379, http=False))
            backend = queue_backend.through(proxy)
            queue = backend.queue(taken)
            queue.put("before")  # the connection is open and pooled
            proxy.set_mode("refuse")  # drops it, and refuses new ones
            calls: dict[str, Callable[[], object]] = {"put": lambda: queue.put(RECORDING),
                                                      "backlog": queue.backlog}  # fmt: skip

            def back() -> None:
                proxy.set_mode("pass")
        else:
            queue = queue_backend.queue(taken)
            queue.put("before")  # the connection is open
            holder = sqlite3.connect(queue_backend.config.data_dir / "queue.db", isolation_level=None)
            stack.callback(holder.close)
            holder.execute("begin exclusive")  # another process holds the file (SQLite's "busy")
            # reads go on in WAL mode while a writer holds the file: only writes are refused
            calls = {"put": lambda: queue.put(RECORDING)}

            def back() -> None:
                holder.execute("rollback")

        raised: dict[str, type[Exception] | None] = {}
        for name, call in calls.items():
            try:
                call()
                raised[name] = None
            except Exception as exc:  # noqa: BLE001 - what is raised is the point
                raised[name] = type(exc)
        _assert_refused(raised)
        back()
        queue.put(RECORDING)
        assert drain(queue) == 2
        assert taken.messages == ["before", RECORDING], "what was taken before stays; the refused put is not there"
