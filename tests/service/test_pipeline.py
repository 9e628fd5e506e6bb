"""The pipeline on both backends: tape closed → queued → mixed → stored → completed, idempotent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from callrec.db.schema import COMPLETED, QUEUED, Call, Recording
from callrec.jobs.sweep import requeue
from callrec.service.pipeline import Service
from callrec.service.schedule import FakeClock
from tests.service.backends import Backend
from tests.service.conftest import drain
from tests.support.audio import decode, probe, xcorr
from tests.support.tapes import make_tape

pytestmark = pytest.mark.slow  # the pipeline mixing real calls on both backends (seconds each)


def _recording(service: Service, call_id: str) -> Recording:
    with service.ctx.sessions() as s:
        rec = s.scalar(select(Recording).where(Recording.call_id == call_id))
        assert rec is not None
        return rec


def _fetch(service: Service, rec: Recording, dest: Path) -> Path:
    storage = service.ctx.storage(rec.storage)
    storage.download(rec.storage_key, dest)
    return dest


def test_a_closed_tape_becomes_a_stored_recording_with_the_right_channels(
    service: Service, backend: Backend, tmp_path: Path
) -> None:
    made = make_tape(backend.config.data_dir / "tapes", seconds=4.0)
    call_id = service.pipeline.tape_closed(made.folder)
    assert not made.folder.exists(), "the tape leaves local disk once storage has it"
    assert _recording(service, call_id).state == QUEUED
    assert drain(service) == 1
    rec = _recording(service, call_id)
    assert rec.state == COMPLETED, rec.reason
    assert rec.bytes > 0 and rec.md5 and rec.duration_s > 3.5
    out = _fetch(service, rec, tmp_path / "out.mp3")
    assert probe(out)["streams"][0]["channels"] == 2
    audio = decode(out)
    for channel, party in ((0, "A"), (1, "B")):
        _, peak = xcorr(audio[:, channel].astype(np.float64), made.truth[party].astype(np.float64), 800)
        assert peak > 0.9, (party, peak)
    with service.ctx.sessions() as s:
        call = s.get(Call, call_id)
        assert call is not None and call.tape_key and not call.tape_local
        assert [p.number for p in call.parties] == ["+74951230001", "201"]
        assert all(row.quality.get("packets", 0) > 0 for row in call.streams)


def test_running_a_job_twice_makes_one_recording(service: Service, backend: Backend) -> None:
    made = make_tape(backend.config.data_dir / "tapes", seconds=2.0)
    call_id = service.pipeline.tape_closed(made.folder)
    rec_id = _recording(service, call_id).id
    service.queue.enqueue(rec_id)
    service.queue.enqueue(rec_id)
    drain(service)
    service.pipeline.process(rec_id)
    with service.ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Recording)) == 1
        rec = s.get(Recording, rec_id)
        assert rec is not None and rec.state == COMPLETED and rec.attempts == 1
    storage = service.ctx.storage(rec.storage)
    assert [k for k in storage.list(f"d/{rec.domain_id}/recordings/")] == [rec.storage_key]


def test_ingesting_a_tape_twice_finds_the_same_call(service: Service, backend: Backend) -> None:
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    copy = made.folder.with_name(made.folder.name)  # the same folder name is the same tape
    import shutil

    keep = backend.config.data_dir / "keep"
    shutil.copytree(made.folder, keep)
    first = service.pipeline.tape_closed(made.folder)
    shutil.copytree(keep, copy)
    second = service.pipeline.tape_closed(copy)
    assert first == second
    with service.ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call)) == 1
        assert s.scalar(select(func.count()).select_from(Recording)) == 1


def test_a_lost_queue_message_is_found_again_by_the_sweep(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    call_id = service.pipeline.tape_closed(made.folder)
    waiting = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    service.pipeline.tape_closed(waiting.folder)
    clock.advance(backend.config.requeue_after_s + 1)
    # messages still in the queue: recordings waiting their turn are not queued again
    assert requeue(service.pipeline) == 0
    service.queue.huey.flush()  # the queue loses both messages (a Redis flush, a deleted queue file)
    assert drain(service) == 0 and _recording(service, call_id).state == QUEUED
    assert requeue(service.pipeline) == 2
    assert requeue(service.pipeline) == 0, "just queued: not again until requeue_after_s has passed"
    assert drain(service) == 2
    assert _recording(service, call_id).state == COMPLETED
