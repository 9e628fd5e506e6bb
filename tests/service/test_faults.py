"""Faults: a worker killed mid-mix, S3 away for a while, a corrupted upload, a full disk. Nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, MIXING, QUEUED, Call, Job, Recording
from callrec.jobs.sweep import requeue
from callrec.service.outbox import TapeOutbox
from callrec.service.pipeline import WAITING_FOR_TAPE, Service
from callrec.service.schedule import FakeClock
from tests.service.backends import Backend
from tests.service.conftest import drain, set_settings
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import MotoServer
from tests.support.tapes import make_long_tape, make_tape

pytestmark = pytest.mark.slow  # callrec worker processes killed, S3 on moto, a tmpfs (root)


def _rec(service: Service, call_id: str) -> Recording:
    with service.ctx.sessions() as s:
        rec = s.scalar(select(Recording).where(Recording.call_id == call_id))
        assert rec is not None
        return rec


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _worker_env(backend: Backend) -> dict[str, str]:
    cfg = backend.config
    env = dict(os.environ)
    env.update(
        CALLREC_DATA=str(cfg.data_dir), CALLREC_LEASE_S="2", CALLREC_SWEEP_INTERVAL_S="0.5",
        CALLREC_REQUEUE_AFTER_S="2", CALLREC_BACKOFF_BASE_S="0.2", CALLREC_SECRET_KEY=cfg.secret_key,
        CALLREC_EGRESS_ALLOW=",".join(cfg.egress_allow),  # the domain's S3 (moto) is on loopback
    )  # fmt: skip
    if cfg.database_url:
        env["CALLREC_DATABASE_URL"] = cfg.database_url
    if cfg.queue_url:
        env.update(CALLREC_QUEUE_URL=cfg.queue_url, CALLREC_QUEUE_NAME=cfg.queue_name)
    return env


@pytest.fixture
def worker(backend: Backend, service: Service) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``callrec worker`` (one mixing process) on the backend."""
    backend.config.secret_key = (backend.config.data_dir / "secret.key").read_text().strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "callrec", "worker", "--workers", "1"], env=_worker_env(backend),
        stderr=subprocess.PIPE,
    )  # fmt: skip
    yield proc
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    print(err.decode(errors="replace")[-3000:])


def test_a_worker_killed_mid_mix_is_retried_and_one_recording_exists(
    service: Service, backend: Backend, worker: subprocess.Popen[bytes]
) -> None:
    # the real clock: the worker process does not share the test's fake one
    service.ctx.clock = __import__("callrec.service.schedule", fromlist=["SystemClock"]).SystemClock()
    made = make_long_tape(backend.config.data_dir / "tapes", seconds=1800)
    call_id = service.pipeline.tape_closed(made.folder)
    _wait("the worker to start mixing", lambda: _rec(service, call_id).state == MIXING)
    holder = _rec(service, call_id).worker
    pid = int(holder.rsplit(":", 1)[1])
    assert pid != worker.pid, "the consumer forks its mixing processes"
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    _wait("the recording to complete after the kill", lambda: _rec(service, call_id).state == COMPLETED, 120)
    rec = _rec(service, call_id)
    assert rec.attempts == 2 and rec.worker != holder
    with service.ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Recording)) == 1
        jobs = list(s.scalars(select(Job).where(Job.recording_id == rec.id).order_by(Job.id)))
    assert jobs[0].state == "failed" and "lease ran out" in jobs[0].error, [(j.kind, j.state) for j in jobs]
    assert [j.state for j in jobs[1:]] == ["done", "done"]
    keys = list(service.ctx.storage(rec.storage).list(f"d/{rec.domain_id}/recordings/"))
    assert keys == [rec.storage_key]
    assert not list((backend.config.work_dir).glob("mix-*")), "the killed attempt's scratch must be cleared"


@pytest.fixture
def proxied(backend: Backend, service: Service, s3: MotoServer) -> Iterator[FaultProxy]:
    """The domain's S3 reached through a proxy that can refuse connections or corrupt uploads."""
    host, port = s3.endpoint.removeprefix("http://").split(":")
    with FaultProxy(host, int(port)) as proxy:
        settings = backend.storage_settings()
        settings["endpoint_url"] = proxy.endpoint
        set_settings(service, "default", {"storage": settings})
        yield proxy


@pytest.mark.parametrize("backend", ["distributed"], indirect=True)
def test_s3_away_for_a_while_recordings_wait_and_nothing_is_lost(
    service: Service, backend: Backend, proxied: FaultProxy, clock: FakeClock, s3: MotoServer
) -> None:
    set_settings(service, "default", {"keep_tape_days": None})  # keep tapes: this one must reach S3 too
    proxied.set_mode("refuse")
    made = make_tape(backend.config.data_dir / "tapes", seconds=2.0)
    call_id = service.pipeline.tape_closed(made.folder)
    assert made.folder.is_dir(), "the tape stays on local disk while S3 is away"
    # no worker can read the tape yet: the recording waits for it, dispatched to nobody, never failed
    assert drain(service) == 0
    rec = _rec(service, call_id)
    assert rec.state == QUEUED and rec.reason == WAITING_FOR_TAPE and rec.attempts == 0, (rec.state, rec.reason)
    clock.advance(120)
    assert requeue(service.pipeline) == 0, "a recording whose tape is on one host's disk is not dispatched"
    # a worker that gets its message anyway (a re-mix, a stale message) gives it back uncounted
    with transaction(service.ctx.sessions) as s:
        s.execute(update(Recording).where(Recording.id == rec.id).values(next_attempt_at=None))
    service.pipeline.process(rec.id)
    assert _rec(service, call_id).state == QUEUED and _rec(service, call_id).attempts == 0
    # the outbox retries with back-off; while S3 is away the tape stays
    outbox = TapeOutbox(service.pipeline)
    os.utime(made.folder / "call.json", (time.time() - 60, time.time() - 60))
    assert outbox.run_once() == 0 and made.folder.is_dir()
    proxied.set_mode("pass")
    assert outbox.run_once(time.monotonic() + 120) == 1
    assert not made.folder.exists(), "a delivered tape leaves the local disk"
    with service.ctx.sessions() as s:
        call = s.get(Call, call_id)
        assert call is not None and call.tape_key and not call.tape_local
    size = make_tape_size = (s3.client().head_object(Bucket=backend.bucket, Key=_object(backend, call.tape_key)))
    assert make_tape_size["ContentLength"] > 0 and size
    # its arrival dispatched the recording: it mixes now, once
    assert drain(service) >= 1
    rec = _rec(service, call_id)
    assert rec.state == COMPLETED, (rec.state, rec.reason)
    stored = service.ctx.storage(rec.storage).stat(rec.storage_key)
    assert stored is not None and stored.md5 == rec.md5


@pytest.mark.parametrize("backend", ["distributed"], indirect=True)
def test_s3_away_when_the_worker_fetches_the_tape_is_retried_without_counting(
    service: Service, backend: Backend, proxied: FaultProxy, clock: FakeClock, s3: MotoServer
) -> None:
    made = make_tape(backend.config.data_dir / "tapes", seconds=2.0)
    call_id = service.pipeline.tape_closed(made.folder)
    assert not made.folder.exists()
    proxied.set_mode("refuse")
    assert drain(service) == 1
    rec = _rec(service, call_id)
    assert rec.state == QUEUED and "fetching the tape failed" in rec.reason, rec.reason
    assert rec.attempts == 0, "storage being away is transient: no attempt is counted"
    for _ in range(3):
        clock.advance(700)
        requeue(service.pipeline)
        drain(service)
    assert _rec(service, call_id).state == QUEUED and _rec(service, call_id).attempts == 0
    proxied.set_mode("pass")
    clock.advance(700)
    requeue(service.pipeline)
    drain(service)
    rec = _rec(service, call_id)
    assert rec.state == COMPLETED and rec.attempts == 1
    stored = service.ctx.storage(rec.storage).stat(rec.storage_key)
    assert stored is not None and stored.md5 == rec.md5


def _object(backend: Backend, key: str) -> str:
    prefix = backend.storage_settings().get("prefix", "")
    return f"{str(prefix).strip('/')}/{key}/media.pcap".lstrip("/")


@pytest.mark.parametrize("backend", ["distributed"], indirect=True)
def test_a_corrupted_upload_is_retried(
    service: Service, backend: Backend, proxied: FaultProxy, clock: FakeClock
) -> None:
    made = make_tape(backend.config.data_dir / "tapes", seconds=2.0)
    call_id = service.pipeline.tape_closed(made.folder)
    proxied.corrupt_next_put_bodies(1)
    drain(service)
    rec = _rec(service, call_id)
    assert rec.state == QUEUED and "verif" in rec.reason.lower() or "digest" in rec.reason.lower(), rec.reason
    clock.advance(5)
    requeue(service.pipeline)
    drain(service)
    rec = _rec(service, call_id)
    assert rec.state == COMPLETED
    with service.ctx.sessions() as s:
        states = [(j.kind, j.state) for j in s.scalars(select(Job).where(Job.recording_id == rec.id).order_by(Job.id))]
    assert states == [("mix", "done"), ("store", "retrying"), ("mix", "done"), ("store", "done")], states


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        reason = f"cannot mount a small tmpfs to fill: {done.stderr.decode().strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def test_disk_full_while_mixing_fails_with_a_reason_and_is_retried(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    work = backend.config.work_dir
    _mount_tmpfs(work, "16k")
    try:
        made = make_tape(backend.config.data_dir / "tapes", seconds=30.0)
        call_id = service.pipeline.tape_closed(made.folder)
        drain(service)
        rec = _rec(service, call_id)
        # a tape in S3 fills the disk as it is fetched; a tape in the local folder, as it is mixed
        expected = "disk full while fetching the tape" if backend.distributed else "disk full while mixing"
        assert rec.state == QUEUED and rec.reason.startswith(expected), rec.reason
        with service.ctx.sessions() as s:
            job = s.scalars(select(Job).where(Job.recording_id == rec.id)).one()
        assert job.state == "retrying" and job.error == rec.reason and job.next_attempt_at is not None
    finally:
        subprocess.run(["umount", str(work)], check=True)
    clock.advance(5)
    requeue(service.pipeline)
    drain(service)
    assert _rec(service, call_id).state == COMPLETED
