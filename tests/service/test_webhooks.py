"""Webhooks on both backends: real receivers on 127.0.0.1 check every signature; failures are retried with
back-off on a moved clock; the delivery log and redelivery through the API; one domain never sees another's."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from callrec.app import create_app
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import Recording, WebhookDelivery
from callrec.jobs import retention
from callrec.service import webhooks
from callrec.service.domain_settings import ensure_domain
from callrec.service.pipeline import Service
from callrec.service.schedule import FakeClock
from tests.service.backends import Backend
from tests.service.conftest import drain, set_settings
from tests.support.tapes import make_tape

SECRET = "whsec_" + "k3y" * 8
HOUR = 3600.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def signed(self) -> bool:
        """The signature checked here, independently of the service's code."""
        stamp = self.headers["callrec-timestamp"]
        mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers["callrec-signature"], f"v1={mac}")


class Receiver:
    """A webhook receiver: a real HTTP server on 127.0.0.1 that answers the statuses it is given, then 200."""

    def __init__(self, answers: list[int] | None = None, delay_s: float = 0.0) -> None:
        self.answers = deque(answers or [])
        self.delay_s = delay_s
        self.got: list[Received] = []
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def delivered(self) -> list[Received]:
        return [r for r in self.got if r.answered == 200]

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = outer.answers.popleft() if outer.answers else 200
                outer.got.append(Received({k.lower(): v for k, v in self.headers.items()}, body, status))
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Close the port: connections are refused until ``start`` opens it again."""
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Any:
    made = Receiver()
    yield made
    made.stop()


def _hooks(service: Service, *receivers: dict[str, Any]) -> None:
    # stored encrypted, as the API stores it
    set_settings(service, "default", {"webhook_secret": service.ctx.box.encrypt(SECRET), "webhooks": list(receivers)})


def _record(service: Service, backend: Backend, **kw: Any) -> tuple[str, str]:
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0, **kw)
    call_id = service.pipeline.tape_closed(made.folder)
    drain(service)
    with service.ctx.sessions() as s:
        rec_id = s.scalars(select(Recording.id).where(Recording.call_id == call_id)).one()
    return call_id, rec_id


def _deliveries(service: Service) -> list[WebhookDelivery]:
    with service.ctx.sessions() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at, WebhookDelivery.id)))


def _sweep_later(service: Service, clock: FakeClock, seconds: float) -> None:
    """Move the clock, run the sweeps (which queue what is due) and the queue."""
    clock.advance(seconds)
    for sweep in service.pipeline.sweeps:
        sweep()
    drain(service)


def _client(service: Service) -> tuple[TestClient, dict[str, str], dict[str, str]]:
    """The API on this service, a key of ``default`` and a key of another domain."""
    now = service.ctx.clock.now()
    with transaction(service.ctx.sessions) as s:
        mine = ensure_domain(s, "default", now)
        theirs = ensure_domain(s, "other", now)
        s.flush()
        _, key = queries.create_key(s, mine.id, now)
        _, other = queries.create_key(s, theirs.id, now)
    return TestClient(create_app(service)), {"Authorization": f"Bearer {key}"}, {"Authorization": f"Bearer {other}"}


@pytest.mark.slow
def test_a_completed_recording_is_posted_signed_with_the_call_card_and_a_working_link(
    service: Service, backend: Backend, receiver: Receiver
) -> None:
    only_failures = Receiver()
    try:
        _hooks(service, {"url": receiver.url, "with_link": True},
               {"url": only_failures.url, "events": ["recording.failed"]})  # fmt: skip
        call_id, rec_id = _record(service, backend)
    finally:
        only_failures.stop()
    assert only_failures.got == [], "a receiver gets only the events it subscribed to"
    (got,) = receiver.got
    assert got.signed
    base = webhooks.public_base(service.ctx.config)
    body = got.json
    (delivery,) = _deliveries(service)
    assert got.headers["callrec-event"] == body["event"] == "recording.completed"
    assert got.headers["callrec-delivery"] == body["id"] == delivery.id
    assert got.headers["content-type"] == "application/json"
    assert body["domain"] == "default"
    assert body["recording"]["id"] == rec_id and body["recording"]["state"] == "completed"
    assert body["recording_url"] == f"{base}/api/v1/recordings/{rec_id}"
    assert body["call"]["id"] == call_id and body["call"]["recording"]["id"] == rec_id
    assert [p["number"] for p in body["call"]["parties"]] == ["+74951230001", "201"]
    assert webhooks.as_sent(service.ctx, delivery.body) == got.body.decode(), "the row keeps the body sent"
    assert delivery.state == "delivered" and delivery.attempts == 1 and delivery.last_status == 200
    assert [(e["status"], e["error"]) for e in delivery.log] == [(200, "")]
    link = urlsplit(body["link"]["url"])
    assert f"{link.scheme}://{link.netloc}" == base and body["link"]["expires_at"]
    with TestClient(create_app(service)) as client:
        page = client.get(link.path)
        assert page.status_code == 200, page.text
        assert client.get(f"{link.path}/audio").status_code == 200


@pytest.mark.slow
def test_a_failing_receiver_is_retried_with_back_off_and_gets_the_event_once(
    service: Service, backend: Backend, clock: FakeClock
) -> None:
    receiver = Receiver(answers=[500, 500])
    try:
        _hooks(service, {"url": receiver.url})
        _record(service, backend)
        assert [r.answered for r in receiver.got] == [500]
        (delivery,) = _deliveries(service)
        assert delivery.state == "pending" and delivery.next_attempt_at is not None
        wait = (delivery.next_attempt_at - clock.now()).total_seconds()
        assert webhooks.BACKOFF_BASE_S * 0.75 <= wait <= webhooks.BACKOFF_BASE_S * 1.25
        _sweep_later(service, clock, 1.0)
        service.pipeline.process(f"webhook:{delivery.id}")  # a message that arrives early
        assert len(receiver.got) == 1, "nothing is sent again before its time"
        _sweep_later(service, clock, HOUR)
        assert [r.answered for r in receiver.got] == [500, 500]
        receiver.stop()
        _sweep_later(service, clock, HOUR)
        (delivery,) = _deliveries(service)
        assert delivery.state == "pending" and "refused" in delivery.last_error.lower(), delivery.last_error
        receiver.start()  # the same port again
        _sweep_later(service, clock, HOUR)
        _sweep_later(service, clock, HOUR)  # and nothing more after it was delivered
    finally:
        receiver.stop()
    assert [r.answered for r in receiver.got] == [500, 500, 200]
    assert len(receiver.delivered) == 1 and all(r.signed for r in receiver.got)
    assert len({r.headers["callrec-delivery"] for r in receiver.got}) == 1, "one delivery id for every attempt"
    (delivery,) = _deliveries(service)
    assert delivery.state == "delivered" and delivery.attempts == 4
    assert [e["status"] for e in delivery.log] == [500, 500, None, 200]
    assert delivery.log[0]["error"].startswith("the receiver answered 500")
    assert all(isinstance(e["ms"], int) and e["at"] for e in delivery.log)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # the counting is the same on both
def test_a_receiver_that_keeps_failing_is_given_up_on(service: Service, backend: Backend, clock: FakeClock) -> None:
    receiver = Receiver(answers=[503] * webhooks.MAX_ATTEMPTS)
    try:
        _hooks(service, {"url": receiver.url})
        _record(service, backend)
        for _ in range(webhooks.MAX_ATTEMPTS + 2):
            _sweep_later(service, clock, 2 * HOUR)
    finally:
        receiver.stop()
    assert len(receiver.got) == webhooks.MAX_ATTEMPTS and receiver.delivered == []
    (delivery,) = _deliveries(service)
    assert delivery.state == "failed" and delivery.last_status == 503 and len(delivery.log) == webhooks.MAX_ATTEMPTS


@pytest.mark.slow
def test_no_answer_in_time_is_retried(
    service: Service, backend: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "TIMEOUT_S", 0.3)
    receiver = Receiver(delay_s=1.5)
    try:
        _hooks(service, {"url": receiver.url})
        _record(service, backend)
        (delivery,) = _deliveries(service)
        assert delivery.state == "pending" and delivery.last_error == "no answer within 0.3 s"
        receiver.delay_s = 0.0
        _sweep_later(service, clock, HOUR)
    finally:
        receiver.stop()
    (delivery,) = _deliveries(service)
    assert delivery.state == "delivered" and [e["status"] for e in delivery.log] == [None, 200]


@pytest.mark.slow
def test_failed_and_deleted_recordings_are_told(
    service: Service, backend: Backend, clock: FakeClock, receiver: Receiver
) -> None:
    service.ctx.config.max_attempts = 1
    _hooks(service, {"url": receiver.url, "events": ["recording.failed", "recording.deleted"], "with_link": True})
    set_settings(service, "default", {"retention": {"days": 1, "rules": []}})
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    (made.folder / "media.pcap").write_bytes(b"this is not a capture at all")
    broken_call = service.pipeline.tape_closed(made.folder)
    drain(service)
    _, kept = _record(service, backend)
    assert [r.json["event"] for r in receiver.got] == ["recording.failed"]
    failed = receiver.got[0].json
    assert failed["call"]["id"] == broken_call and failed["recording"]["state"] == "failed"
    assert failed["recording"]["reason"] and failed["link"] is None, "a link only comes with recording.completed"
    clock.advance(2 * 86400)
    retention.sweep(service.ctx, hook=service.pipeline.notify)
    drain(service)
    assert [r.json["event"] for r in receiver.got] == ["recording.failed", "recording.deleted"]
    deleted = receiver.got[1].json
    assert deleted["recording"]["id"] == kept and deleted["recording"]["state"] == "deleted"
    assert all(r.signed for r in receiver.got)
    service.pipeline.notify("recording.deleted", kept)  # told twice: still one delivery
    drain(service)
    assert len(receiver.got) == 2 and len(_deliveries(service)) == 2


@pytest.mark.slow
def test_a_lost_message_and_a_dead_sender_are_taken_up_by_the_sweep(
    service: Service, backend: Backend, clock: FakeClock, receiver: Receiver
) -> None:
    _hooks(service, {"url": receiver.url})
    made = make_tape(backend.config.data_dir / "tapes", seconds=1.0)
    service.pipeline.tape_closed(made.folder)
    assert service.queue.run_one()  # the mix: the hook queues the delivery ...
    service.queue.huey.flush()  # ... and that message is lost
    _sweep_later(service, clock, 0.0)
    assert receiver.got == [], "a fresh delivery is not queued twice at once"
    _sweep_later(service, clock, backend.config.requeue_after_s + 1)
    assert len(receiver.delivered) == 1
    # a sender that died while it held a delivery: its lease runs out and another worker sends it
    (delivery,) = _deliveries(service)
    with transaction(service.ctx.sessions) as s:
        row = s.get(WebhookDelivery, delivery.id)
        assert row is not None
        row.state, row.lease_until = "delivering", clock.now() + timedelta(seconds=30)
    _sweep_later(service, clock, 1.0)
    assert len(receiver.got) == 1, "a live lease is left alone"
    _sweep_later(service, clock, webhooks.LEASE_S)
    assert len(receiver.delivered) == 2 and _deliveries(service)[0].state == "delivered"


@pytest.mark.slow
def test_deliveries_in_the_api_redelivery_and_another_domain(
    service: Service, backend: Backend, clock: FakeClock, receiver: Receiver
) -> None:
    _hooks(service, {"url": receiver.url})
    _, rec_id = _record(service, backend)
    client, mine, theirs = _client(service)
    with client:
        listed = client.get("/api/v1/webhooks/deliveries", headers=mine).json()["items"]
        assert [(d["event"], d["state"], d["recording_id"], d["url"]) for d in listed] == [
            ("recording.completed", "delivered", rec_id, receiver.url)
        ]
        delivery_id = listed[0]["id"]
        one = client.get(f"/api/v1/webhooks/deliveries/{delivery_id}", headers=mine).json()
        assert one["body"] == receiver.got[0].json and [e["status"] for e in one["log"]] == [200]
        for path in ("", f"/{delivery_id}"):
            assert client.get(f"/api/v1/webhooks/deliveries{path}", headers=theirs).status_code == (
                200 if not path else 404
            )
        assert client.get("/api/v1/webhooks/deliveries", headers=theirs).json()["items"] == []
        stolen = client.post(f"/api/v1/webhooks/deliveries/{delivery_id}/redeliver", headers=theirs)
        assert stolen.status_code == 404 and stolen.json() == {"detail": f"no webhook delivery {delivery_id!r}"}
        assert len(receiver.got) == 1
        clock.advance(30)
        again = client.post(f"/api/v1/webhooks/deliveries/{delivery_id}/redeliver", headers=mine)
        assert again.status_code == 202 and again.json() == {"id": delivery_id, "state": "pending"}
        drain(service)
        first, second = receiver.got
        assert second.body == first.body and second.signed
        assert int(second.headers["callrec-timestamp"]) == int(first.headers["callrec-timestamp"]) + 30
        assert second.headers["callrec-signature"] != first.headers["callrec-signature"]
        one = client.get(f"/api/v1/webhooks/deliveries/{delivery_id}", headers=mine).json()
        assert one["state"] == "delivered" and [e["status"] for e in one["log"]] == [200, 200]


@pytest.mark.slow
def test_webhooks_without_a_usable_secret_fail_without_sending(
    service: Service, backend: Backend, receiver: Receiver
) -> None:
    # written past the API's check (which refuses webhooks without a secret), as an older row could be
    with transaction(service.ctx.sessions) as s:
        row = queries.domain_by_name(s, "default")
        assert row is not None
        row.settings = {**row.settings, "webhooks": [{"url": receiver.url}], "webhook_secret": ""}
    _record(service, backend)
    assert receiver.got == []
    (delivery,) = _deliveries(service)
    assert delivery.state == "failed" and delivery.last_error == (
        "the domain has no webhook_secret to sign with; set one and redeliver"
    )
