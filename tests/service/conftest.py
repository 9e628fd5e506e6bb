"""Fixtures of the service tests: each test runs once per backend (embedded and distributed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest

from callrec.db.engine import transaction
from callrec.jobs.worker import build
from callrec.service.domain_settings import ensure_domain, load_settings, merge_settings, store_settings
from callrec.service.pipeline import Service
from callrec.service.schedule import FakeClock
from tests.service.backends import Backend, postgres_database, redis_queue, service_config
from tests.support.s3server import MotoServer


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


# distributed: PostgreSQL, Redis and S3 on moto (slow: `make test-fast` runs the embedded half)
@pytest.fixture(params=["embedded", pytest.param("distributed", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    data = tmp_path / "data"
    if request.param == "embedded":
        yield Backend("embedded", service_config(data))
        return
    with ExitStack() as stack:
        db = stack.enter_context(postgres_database())
        queue_url, queue_name = stack.enter_context(redis_queue())
        s3: MotoServer = request.getfixturevalue("s3")
        bucket = s3.make_bucket()
        cfg = service_config(data, database_url=db, queue_url=queue_url, queue_name=queue_name)
        yield Backend("distributed", cfg, s3.endpoint, bucket)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def service(backend: Backend, clock: FakeClock) -> Iterator[Service]:
    built = build(backend.config, clock=clock)
    set_settings(built, "default", {"storage": backend.storage_settings()})
    yield built
    built.close()


def set_settings(service: Service, domain: str, update: dict[str, object]) -> None:
    ctx = service.ctx
    with transaction(ctx.sessions) as s:
        row = ensure_domain(s, domain, ctx.clock.now())
        settings = merge_settings(load_settings(s, row), update)
        storage = settings.storage
        if storage.secret_access_key and not storage.secret_access_key.startswith("enc:"):
            storage.secret_access_key = ctx.box.encrypt(storage.secret_access_key)
        store_settings(s, row, settings)


def drain(service: Service, limit: int = 100) -> int:
    """Run queued jobs in this thread until the queue is empty; how many ran."""
    ran = 0
    while ran < limit and service.queue.run_one():
        ran += 1
    return ran
