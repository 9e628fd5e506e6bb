"""Issue 12, secrets and edges, written as the attacks: a webhook's public link never rests in the
database or the deliveries API in plain form, yet the receiver gets a working, signed one."""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from huey import SqliteHuey
from sqlalchemy import select

from callrec.app import create_app
from callrec.db.engine import transaction
from callrec.db.schema import Link, Recording, WebhookDelivery
from callrec.service import links, webhooks
from callrec.service.pipeline import Service
from callrec.service.schedule import FakeClock
from tests.service.backends import Backend
from tests.service.conftest import drain, set_settings
from tests.service.test_webhooks import Receiver, _client, _hooks, _record
from tests.support.tapes import make_tape


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.stop()


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_schedule_change_replans_recordings_waiting_for_the_old_window(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    night = {"mode": "windows", "timezone": "UTC", "windows": [{"days": "*", "from": "22:00", "to": "06:00"}]}
    set_settings(service, "default", {"schedule": night})
    clock.set(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    waiting = [service.pipeline.tape_closed(make_tape(data_tapes(backend), seconds=1.0).folder) for _ in range(2)]
    assert drain(service) == 0
    assert {_rec(service, c).next_attempt_at for c in waiting} == {datetime(2026, 11, 25, 22, 0, tzinfo=UTC)}
    client, mine, _ = _client(service)
    with client:
        # a later window: they wait for it, not for the old one
        later = night | {"windows": [{"days": "*", "from": "23:30", "to": "23:59"}]}
        put = client.put("/api/v1/domains/default/settings", headers=mine, json={"schedule": later})
        assert put.status_code == 200, put.text
        assert {_rec(service, c).next_attempt_at for c in waiting} == {datetime(2026, 11, 25, 23, 30, tzinfo=UTC)}
        # immediate: mixed now, not at 23:30
        put = client.put("/api/v1/domains/default/settings", headers=mine, json={"schedule": {"mode": "immediate"}})
        assert put.status_code == 200, put.text
    drain(service)
    assert [_rec(service, c).state for c in waiting] == ["completed", "completed"]


def data_tapes(backend: Backend) -> Path:
    return backend.config.data_dir / "tapes"


def _rec(service: Service, call_id: str) -> Recording:
    with service.ctx.sessions() as s:
        rec = s.scalar(select(Recording).where(Recording.call_id == call_id))
        assert rec is not None
        return rec


@pytest.mark.parametrize(
    ("http", "public", "expected"),
    [
        (("10.20.30.40", 9090), "", "http://10.20.30.40:9090"),
        (("::1", 8443), "", "http://[::1]:8443"),
        (("127.0.0.1", 8080), "https://rec.example.com/", "https://rec.example.com"),
    ],
)
def test_the_worker_serve_starts_knows_where_the_api_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: tuple[str, int], public: str, expected: str
) -> None:
    from callrec.config import RecorderConfig, ServiceConfig, service_config_from_env
    from callrec.serve import children_for

    monkeypatch.delenv("CALLREC_PUBLIC_URL", raising=False)
    config = ServiceConfig(data_dir=tmp_path, http_host=http[0], http_port=http[1], public_url=public)
    (worker,) = children_for(RecorderConfig(), config, record=False, work=True)
    # what the worker process makes of its environment, and so what its webhooks carry
    assert webhooks.public_base(service_config_from_env(worker.env)) == expected


@pytest.mark.slow
def test_links_an_older_version_stored_in_plain_form_are_sealed_by_the_sweep(
    service: Service, backend: Backend, receiver: Receiver
) -> None:
    _hooks(service, {"url": receiver.url, "with_link": True})
    _record(service, backend)
    (got,) = receiver.got
    sent_url = got.json["link"]["url"]
    token = urlsplit(sent_url).path.removeprefix("/r/")
    # as an older version stored it: the link's URL, token included, in plain form
    legacy = got.json | {"link": {"url": sent_url, "expires_at": got.json["link"]["expires_at"]}}
    with transaction(service.ctx.sessions) as s:
        (row,) = s.scalars(select(WebhookDelivery))
        row.body = json.dumps(legacy, separators=(",", ":"))
        delivery_id = row.id
    for sweep in service.pipeline.sweeps:
        sweep()
    with service.ctx.sessions() as s:
        body = s.get_one(WebhookDelivery, delivery_id).body
    assert token not in body
    assert json.loads(webhooks.as_sent(service.ctx, body)) == legacy, "a redelivery still sends the same link"
