"""Mixing windows with a moved clock: a call ending outside its window waits, queued, until it opens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from callrec.db.schema import COMPLETED, QUEUED, Recording
from callrec.jobs.sweep import requeue
from callrec.service.pipeline import Service
from callrec.service.schedule import FakeClock
from tests.service.backends import Backend
from tests.service.conftest import drain, set_settings
from tests.support.tapes import make_tape

pytestmark = pytest.mark.slow  # the pipeline mixing real calls on both backends (seconds each)

NIGHT_MOSCOW = {
    "mode": "windows",
    "timezone": "Europe/Moscow",
    "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "22:00", "to": "06:00"}],
}


def _state(service: Service, call_id: str) -> Recording:
    with service.ctx.sessions() as s:
        rec = s.scalar(select(Recording).where(Recording.call_id == call_id))
        assert rec is not None
        return rec


def _tick(service: Service) -> int:
    """What a worker's sweep does, then run whatever it queued."""
    requeue(service.pipeline)
    return drain(service)


def test_a_call_ending_outside_a_night_window_waits_and_mixes_when_it_opens(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    set_settings(service, "default", {"schedule": NIGHT_MOSCOW})
    # Wednesday 2026-11-25 12:00 in Moscow (UTC+3) is 09:00 UTC
    clock.set(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.5)
    call_id = service.pipeline.tape_closed(made.folder)
    rec = _state(service, call_id)
    assert rec.state == QUEUED
    assert rec.next_attempt_at == datetime(2026, 11, 25, 19, 0, tzinfo=UTC)  # 22:00 Moscow
    assert drain(service) == 0, "nothing may be queued before the window opens"
    clock.set(datetime(2026, 11, 25, 18, 59, 59, tzinfo=UTC))
    assert _tick(service) == 0 and _state(service, call_id).state == QUEUED
    # a message that reaches a worker early (a re-queue, a manual run) changes nothing
    service.pipeline.process(rec.id)
    assert _state(service, call_id).state == QUEUED and _state(service, call_id).attempts == 0
    clock.set(datetime(2026, 11, 25, 19, 0, 1, tzinfo=UTC))
    assert _tick(service) == 1
    assert _state(service, call_id).state == COMPLETED


def test_the_window_crosses_midnight_into_the_next_day(service: Service, backend: Backend, clock: FakeClock) -> None:
    set_settings(service, "default", {"schedule": NIGHT_MOSCOW})
    # Saturday 03:00 Moscow belongs to Friday's 22:00–06:00 window
    clock.set(datetime(2026, 11, 28, 0, 0, tzinfo=UTC))
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    call_id = service.pipeline.tape_closed(made.folder)
    assert drain(service) == 1 and _state(service, call_id).state == COMPLETED
    # Saturday 23:00 Moscow: no window on Saturday; the next opens Monday 22:00 Moscow
    clock.set(datetime(2026, 11, 28, 20, 0, tzinfo=UTC))
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    later = service.pipeline.tape_closed(made.folder)
    assert _state(service, later).next_attempt_at == datetime(2026, 11, 30, 19, 0, tzinfo=UTC)
    clock.advance(timedelta(days=1).total_seconds())  # Sunday 23:00: still shut
    assert _tick(service) == 0 and _state(service, later).state == QUEUED
    clock.set(datetime(2026, 11, 30, 19, 0, tzinfo=UTC))
    assert _tick(service) == 1 and _state(service, later).state == COMPLETED


def test_a_window_in_another_time_zone(service: Service, backend: Backend, clock: FakeClock) -> None:
    set_settings(
        service,
        "default",
        {"schedule": {"mode": "windows", "timezone": "America/New_York",
                      "windows": [{"days": ["mon"], "from": "09:00", "to": "10:00"}]}},
    )  # fmt: skip
    # Monday 2026-11-30 08:30 in New York (UTC-5) is 13:30 UTC
    clock.set(datetime(2026, 11, 30, 13, 30, tzinfo=UTC))
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    call_id = service.pipeline.tape_closed(made.folder)
    assert _state(service, call_id).next_attempt_at == datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    clock.set(datetime(2026, 11, 30, 14, 30, tzinfo=UTC))
    assert _tick(service) == 1 and _state(service, call_id).state == COMPLETED


def test_a_remix_asked_for_runs_outside_the_window(service: Service, backend: Backend, clock: FakeClock) -> None:
    set_settings(service, "default", {"schedule": NIGHT_MOSCOW})
    clock.set(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    call_id = service.pipeline.tape_closed(made.folder)
    with service.ctx.sessions() as s, s.begin():
        rec = s.scalar(select(Recording).where(Recording.call_id == call_id))
        assert rec is not None
        rec.options = {**rec.options, "asap": True}
        rec.next_attempt_at = None
    service.pipeline.process(rec.id)
    assert _state(service, call_id).state == COMPLETED
