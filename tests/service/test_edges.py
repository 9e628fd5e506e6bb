"""Issue 12, secrets and edges, written as the attacks: a webhook's public link never rests in the
database or the deliveries API in plain form, yet the receiver gets a working, signed one."""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from huey import SqliteHuey
from sqlalchemy import select

from callrec.api.app import create_app
from callrec.db.schema import Link, WebhookDelivery
from callrec.service import links
from callrec.service.pipeline import Service
from tests.service.backends import Backend
from tests.service.conftest import drain
from tests.service.tapes import make_tape
from tests.service.test_webhooks import Receiver, _client, _hooks, _record


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


def test_a_webhook_link_token_is_never_stored_or_shown_but_the_receiver_gets_a_working_one(
    service: Service, backend: Backend, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _hooks(service, {"url": receiver.url, "with_link": True})
    _record(service, backend)
    (got,) = receiver.got
    assert got.signed, "the signature covers the body as sent, link included"
    sent = got.json["link"]
    token = urlsplit(sent["url"]).path.removeprefix("/r/")
    assert len(token) == 43
    with service.ctx.sessions() as s:
        (row,) = s.scalars(select(WebhookDelivery))
        stored = [str(getattr(row, c.key)) for c in WebhookDelivery.__table__.columns]
        (link,) = s.scalars(select(Link))
    assert not any(token in value for value in stored), "the token rests in webhook_deliveries"
    assert link.token_hash == links.hash_token(token) and sent["id"] == link.id
    assert token not in caplog.text
    client, mine, _ = _client(service)
    with client:
        listed = client.get("/api/v1/webhooks/deliveries", headers=mine)
        shown = client.get(f"/api/v1/webhooks/deliveries/{row.id}", headers=mine)
        assert shown.status_code == 200 and token not in shown.text and token not in listed.text
        assert shown.json()["body"]["link"] == sent | {"url": "(sent to the receiver only)"}
    with TestClient(create_app(service)) as public:
        assert public.get(f"/r/{token}").status_code == 200
        assert public.get(f"/r/{token}/audio").status_code == 200
    # a redelivery sends the same working link again, signed anew
    client, mine, _ = _client(service)
    with client:
        assert client.post(f"/api/v1/webhooks/deliveries/{row.id}/redeliver", headers=mine).status_code == 202
    drain(service)
    first, second = receiver.got
    assert second.signed and second.json == first.json and json.loads(second.body)["link"]["url"] == sent["url"]


def test_tapes_and_recordings_the_service_writes_are_private(service: Service, backend: Backend) -> None:
    data = backend.config.data_dir
    made = make_tape(data / "tapes", seconds=1.0)
    written = [made.folder, *made.folder.rglob("*")]
    assert len(written) > 2
    loose = {str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written if p.stat().st_mode & 0o077}
    assert loose == {}, "a tape readable by others"
    service.pipeline.tape_closed(made.folder)
    drain(service)
    everything = [data, *data.rglob("*")]
    loose = {str(p): oct(stat.S_IMODE(p.lstat().st_mode)) for p in everything if p.lstat().st_mode & 0o077}
    assert loose == {}, "readable by others"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_a_worker_whose_queue_cannot_be_read_logs_it_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from callrec.service import disk  # new with the fix: before it, every poll logged a traceback

    # as run_worker builds it: SqliteHuey in the data folder, idle polls every 50 ms at most
    huey = SqliteHuey("callrec", filename=str(tmp_path / "queue.db"), results=False)
    consumer = huey.create_consumer(workers=1, worker_type="thread", initial_delay=0.001, max_delay=0.001)
    once = disk.quiet_repeats()
    now = [1000.0]
    once.repeats.clock = lambda: now[0]

    def full() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(huey, "dequeue", full)
    worker = consumer.worker_threads[0][0]
    caplog.set_level(logging.INFO)
    try:
        for _ in range(200):  # ten seconds of polls at 50 ms
            worker.loop()
            now[0] += 0.05
        logged = [r.getMessage() for r in caplog.records if "Error reading from queue" in r.getMessage()]
        assert logged == ["Error reading from queue"], f"{len(logged)} tracebacks in 10 s"
        now[0] += 60
        worker.loop()
        logged = [r.getMessage() for r in caplog.records if "Error reading from queue" in r.getMessage()]
        assert logged[1:] == ["Error reading from queue (199 more like it in the last minute)"]
    finally:
        for name in list(logging.Logger.manager.loggerDict):
            if name.startswith("huey.consumer"):
                logging.getLogger(name).removeFilter(once)
        logging.getLogger("huey.consumer").removeFilter(once)
