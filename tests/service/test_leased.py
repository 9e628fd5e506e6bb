"""The one leased-work core: fencing tokens, the database's clock, transient vs counted failures, requeue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from callrec.db.schema import COMPLETED, MIXING, QUEUED, Recording
from callrec.errors import Permanent, StorageError, Transient
from callrec.jobs import steps
from callrec.jobs.sweep import requeue
from callrec.service import leased
from callrec.service.clock import DatabaseClock
from callrec.service.leased import LeaseLost
from callrec.service.pipeline import RECORDINGS, Service
from callrec.service.schedule import FakeClock, OffsetClock
from tests.service.backends import Backend
from tests.service.conftest import drain
from tests.support.tapes import make_tape


def _queued(service: Service, backend: Backend) -> str:
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    call_id = service.pipeline.tape_closed(made.folder)
    with service.ctx.sessions() as s:
        rec_id = s.scalar(select(Recording.id).where(Recording.call_id == call_id))
    assert rec_id is not None
    return rec_id


def _row(service: Service, rec_id: str) -> Recording:
    with service.ctx.sessions() as s:
        rec = s.get(Recording, rec_id)
        assert rec is not None
        return rec


@pytest.mark.slow
def test_a_worker_that_lost_its_lease_writes_nothing(service: Service, backend: Backend, clock: FakeClock) -> None:
    rec_id = _queued(service, backend)
    frozen = leased.claim(service.ctx, RECORDINGS, rec_id)
    assert frozen is not None and _row(service, rec_id).state == MIXING
    assert leased.claim(service.ctx, RECORDINGS, rec_id) is None, "a live lease is not taken over"
    # the holder freezes past its lease: another worker takes the row over and completes it
    clock.advance(service.ctx.config.lease_s + 1)
    steps.run(service.pipeline, rec_id)
    done = _row(service, rec_id)
    assert done.state == COMPLETED and done.lease_token == frozen.token + 1
    # the frozen worker wakes up: every write it tries is refused, and the recording stays completed
    with pytest.raises(LeaseLost, match="another worker holds it now"), frozen.fenced():
        pytest.fail("the fenced body must not run")
    with pytest.raises(LeaseLost):
        frozen.retry_or_fail(StorageError("S3 went away"), service.queue.put)
    with service.ctx.sessions() as s:
        assert not frozen.touch(s), "its heartbeat cannot renew a lease it lost"
    after = _row(service, rec_id)
    assert (after.state, after.md5, after.storage_key) == (COMPLETED, done.md5, done.storage_key)


@pytest.mark.slow
def test_a_worker_frozen_in_the_middle_of_a_mix_discards_its_result(
    service: Service, backend: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec_id = _queued(service, backend)
    real_mix = steps._mix
    seen: list[str] = []

    def mix_then_lose_the_lease(*args: object, **kwargs: object) -> object:
        out = real_mix(*args, **kwargs)  # type: ignore[arg-type]
        if not seen:  # while this worker mixed, its lease ran out and another took the row
            seen.append("frozen")
            clock.advance(service.ctx.config.lease_s + 1)
            monkeypatch.setattr(steps, "_mix", real_mix)
            steps.run(service.pipeline, rec_id)
        return out

    monkeypatch.setattr(steps, "_mix", mix_then_lose_the_lease)
    steps.run(service.pipeline, rec_id)
    rec = _row(service, rec_id)
    assert seen == ["frozen"]
    assert rec.state == COMPLETED and rec.attempts == 2 and rec.reason == ""
    keys = list(service.ctx.storage(rec.storage).list(f"d/{rec.domain_id}/recordings/"))
    assert keys == [rec.storage_key], "one object per recording"


@pytest.mark.slow
def test_transient_failures_are_not_counted_and_others_fail_after_the_limit(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    rec_id = _queued(service, backend)
    limit = service.ctx.config.max_attempts
    for _ in range(limit + 3):
        held = leased.claim(service.ctx, RECORDINGS, rec_id)
        assert held is not None
        final, _, delay = held.retry_or_fail(Transient("disk full"), service.queue.put)
        assert not final and delay > 0
        clock.advance(service.ctx.config.backoff_max_s * 2)
    assert (_row(service, rec_id).state, _row(service, rec_id).attempts) == (QUEUED, 0)
    for attempt in range(1, limit + 1):
        held = leased.claim(service.ctx, RECORDINGS, rec_id)
        assert held is not None and held.attempts == attempt
        final, reason, _ = held.retry_or_fail(ValueError("bad"), service.queue.put)
        assert final == (attempt == limit) and reason == "ValueError: bad"
        clock.advance(service.ctx.config.backoff_max_s * 2)
    assert _row(service, rec_id).state == "failed"


@pytest.mark.slow
def test_a_permanent_failure_fails_at_once(service: Service, backend: Backend) -> None:
    rec_id = _queued(service, backend)
    held = leased.claim(service.ctx, RECORDINGS, rec_id)
    assert held is not None
    final, _, _ = held.retry_or_fail(Permanent("cannot be done"), service.queue.put)
    assert final and _row(service, rec_id).state == "failed" and _row(service, rec_id).reason == "cannot be done"


def test_back_off_doubles_with_jitter_up_to_its_cap() -> None:
    policy = leased.Backoff(base_s=2.0, max_s=60.0, attempts=5, jitter=0.25)
    for attempts, plain in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 60.0), (40, 60.0)]:
        waits = [policy.delay_s(attempts) for _ in range(50)]
        assert all(plain * 0.75 <= w <= plain * 1.25 for w in waits)
        assert len(set(waits)) > 1, "jitter spreads retries"


@pytest.mark.slow
def test_a_queue_that_is_down_leaves_work_for_the_next_sweep(
    service: Service, backend: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put, real_enqueue = service.queue.put, service.queue.enqueue

    def down(message: str, delay_s: float = 0.0) -> None:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(service.queue, "put", down)
    monkeypatch.setattr(service.queue, "enqueue", lambda *a, **k: down(""))
    rec_id = _queued(service, backend)  # the call is committed: the queue's failure is no error
    assert _row(service, rec_id).state == QUEUED and _row(service, rec_id).enqueued_at is None
    assert requeue(service.pipeline) == -1, "the sweep says the queue refused it (and comes back soon)"
    assert _row(service, rec_id).enqueued_at is None
    monkeypatch.setattr(service.queue, "put", real_put)
    monkeypatch.setattr(service.queue, "enqueue", real_enqueue)
    # no waiting for the re-queue interval: never queued means lost
    assert requeue(service.pipeline) == 1
    assert drain(service) == 1 and _row(service, rec_id).state == COMPLETED


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["distributed"], indirect=True)
def test_a_host_whose_clock_runs_ahead_reads_the_databases_clock(service: Service) -> None:
    ahead = DatabaseClock(service.ctx.engine, OffsetClock(40.0), refresh_s=0.0)
    now = datetime.now(UTC)
    assert abs((ahead.now() - now).total_seconds()) < 2.0
    assert 38.0 < -ahead.offset.total_seconds() < 42.0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["distributed"], indirect=True)
def test_a_skewed_worker_does_not_take_over_a_live_lease(service: Service, backend: Backend) -> None:
    from callrec.service.context import Context

    rec_id = _queued(service, backend)
    honest = Context.open(service.ctx.config, run_migrations=False)
    ahead = OffsetClock(service.ctx.config.lease_s + 40)
    skewed = Context.open(service.ctx.config, clock=DatabaseClock(honest.engine, ahead), run_migrations=False)
    try:
        assert leased.claim(honest, RECORDINGS, rec_id) is not None
        # with its own clock this host would see the lease as long expired
        assert ahead.now() > _row(service, rec_id).lease_until  # type: ignore[operator]
        assert leased.claim(skewed, RECORDINGS, rec_id) is None
    finally:
        honest.close()
        skewed.close()


@pytest.mark.slow
def test_requeue_picks_rows_whose_lease_ran_out(service: Service, backend: Backend, clock: FakeClock) -> None:
    rec_id = _queued(service, backend)
    drain(service, limit=0)
    assert leased.claim(service.ctx, RECORDINGS, rec_id) is not None
    clock.advance(service.ctx.config.lease_s - 1)
    assert requeue(service.pipeline) == 0
    clock.advance(2)
    assert requeue(service.pipeline) == 1
    assert _row(service, rec_id).enqueued_at is not None
    assert timedelta(0) <= clock.now() - _row(service, rec_id).enqueued_at  # type: ignore[operator]
