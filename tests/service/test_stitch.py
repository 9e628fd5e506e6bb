"""Stitching on both backends: an interaction's calls made into one file through the real pipeline (tapes
mixed, recordings stored), checked by decoding it with ffmpeg; kept up to date when a member changes;
deleted with its calls; reachable through the API only from its own domain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from callrec.app import create_app
from callrec.db import queries
from callrec.db.engine import transaction
from callrec.db.schema import COMPLETED, DELETED, QUEUED, Call, Domain, Party, Recording, Stitch
from callrec.jobs import stitch, stitch_audio
from callrec.jobs.retention import delete_recording
from callrec.service import stitches
from callrec.service.domain_settings import ensure_domain
from callrec.service.pipeline import Service
from tests.service.backends import Backend
from tests.service.conftest import drain, set_settings
from tests.support.audio import decode, xcorr
from tests.support.tapes import MadeTape, make_tape

RATE = 8000
CUSTOMER = "+74951230001"
T0 = time.time() - 3600
SECONDS = 3.0
LAG = 800  # samples of slack when matching a voice (the stored recording starts at its first packet)


def _domain_id(service: Service, name: str = "default") -> int:
    with service.ctx.sessions() as s:
        found = s.scalar(select(Domain.id).where(Domain.name == name))
        assert found is not None
        return found


def _call(service: Service, backend: Backend, interaction: str, start: float, numbers: tuple[str, str],
          seed: int, *, domain: str = "default", close: bool = True) -> tuple[MadeTape, str]:  # fmt: skip
    made = make_tape(backend.config.data_dir / "tapes", seconds=SECONDS, domain=domain, interaction=interaction,
                     started_at=start, numbers=numbers, seed=seed)  # fmt: skip
    if close:
        return made, service.pipeline.tape_closed(made.folder)
    service.pipeline.tape_opened(made.folder)
    with service.ctx.sessions() as s:
        rec = s.scalar(select(Recording).where(Recording.call.has(tape_ref=made.folder.name)))
        assert rec is not None
        return made, rec.call_id


def _row(service: Service, interaction: str, domain: str = "default") -> Stitch:
    with service.ctx.sessions() as s:
        row = stitches.current(s, _domain_id(service, domain), interaction)
        assert row is not None
        return row


def _audio(service: Service, row: Stitch, dest: Path) -> np.ndarray:
    service.ctx.storage(row.storage).download(row.storage_key, dest)
    return decode(dest).astype(np.float64)


def _matches(segment: np.ndarray, voice: np.ndarray) -> float:
    return xcorr(segment, voice.astype(np.float64), LAG)[1]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["tape", "recording"])
def test_three_calls_stitch_with_the_customer_left_operators_right_and_the_waits_cut(
    service: Service, backend: Backend, tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "tape":
        set_settings(service, "default", {"keep_tape_days": 1})  # the tapes stay: mixed again, customer left

        def no_stored(*args: object) -> None:
            raise AssertionError("a call whose tape exists is mixed again, not decoded from its recording")

        monkeypatch.setattr(stitch_audio, "_stored", no_stored)
    # the customer calls operator 201, is transferred 40 s later to 202, and 60 s after that 203 calls back
    one, id1 = _call(service, backend, "ix-3", T0, (CUSTOMER, "201"), 10)
    two, id2 = _call(service, backend, "ix-3", T0 + SECONDS + 40, (CUSTOMER, "202"), 20)
    three, id3 = _call(service, backend, "ix-3", T0 + 2 * SECONDS + 100, ("203", CUSTOMER), 30)
    drain(service)
    with service.ctx.sessions() as s:
        kept = [c.tape_deleted_at is None for c in stitches.members(s, _domain_id(service), "ix-3")]
    assert kept == [source == "tape"] * 3
    row = stitches.request(service.ctx, service.queue, _domain_id(service), "ix-3")
    assert row.state == QUEUED and row.reason == ""
    assert drain(service) == 1
    row = _row(service, "ix-3")
    assert row.state == COMPLETED, row.reason
    assert [c["call_id"] for c in row.chapters] == [id1, id2, id3]
    assert [c["who"] for c in row.chapters] == [["201"], ["202"], ["203"]]
    # three calls and two pauses of a second, not the two minutes they took
    assert abs(row.duration_s - (3 * SECONDS + 2 * stitch_media_pause())) < 0.5, row.chapters
    for before, after in zip(row.chapters, row.chapters[1:], strict=False):
        assert 0.5 < after["from_s"] - before["to_s"] < 1.5, row.chapters
    audio = _audio(service, row, tmp_path / f"stitched.{row.format}")
    assert abs(len(audio) / RATE - row.duration_s) < 0.2
    truths = [(one.truth["A"], one.truth["B"]), (two.truth["A"], two.truth["B"]), (three.truth["B"], three.truth["A"])]
    for chapter, (customer, operator) in zip(row.chapters, truths, strict=True):
        seg = audio[int(chapter["from_s"] * RATE) : int(chapter["to_s"] * RATE)]
        assert _matches(seg[:, 0], customer) > 0.8, chapter
        assert _matches(seg[:, 1], operator) > 0.8, chapter
        assert abs(_matches(seg[:, 0], operator)) < 0.1, chapter
        assert abs(_matches(seg[:, 1], customer)) < 0.1, chapter


def stitch_media_pause() -> float:
    from callrec.media.stitch import PAUSE_S

    return PAUSE_S


@pytest.mark.slow
def test_a_stitch_waits_for_a_call_still_recording_and_is_made_when_it_completes(
    service: Service, backend: Backend
) -> None:
    _call(service, backend, "ix-wait", T0, (CUSTOMER, "201"), 1)
    drain(service)
    _, open_id = _call(service, backend, "ix-wait", T0 + 20, (CUSTOMER, "202"), 2, close=False)
    row = stitches.request(service.ctx, service.queue, _domain_id(service), "ix-wait")
    assert (row.state, row.reason) == (QUEUED, "waiting for 1 call")
    assert drain(service) == 0, "nothing runs while a member is still being recorded"
    # asking again changes nothing while the members have not changed
    assert stitches.request(service.ctx, service.queue, _domain_id(service), "ix-wait").reason == "waiting for 1 call"
    with service.ctx.sessions() as s:
        folder = Path(s.scalar(select(Recording).where(Recording.call_id == open_id)).call.tape_local)  # type: ignore[union-attr]
    service.pipeline.tape_closed(folder)
    assert drain(service) == 2, "the recording, then the stitch its completion queued"
    row = _row(service, "ix-wait")
    assert row.state == COMPLETED and len(row.chapters) == 2 and row.chapters[1]["call_id"] == open_id


@pytest.mark.slow
def test_a_call_joining_remakes_the_stitch_and_deleting_every_call_deletes_it(
    service: Service, backend: Backend
) -> None:
    _call(service, backend, "ix-join", T0, (CUSTOMER, "201"), 1)
    _call(service, backend, "ix-join", T0 + 30, (CUSTOMER, "202"), 2)
    drain(service)
    stitches.request(service.ctx, service.queue, _domain_id(service), "ix-join")
    drain(service)
    first = _row(service, "ix-join")
    assert first.state == COMPLETED and len(first.chapters) == 2
    storage = service.ctx.storage(first.storage)
    assert storage.stat(first.storage_key) is not None

    # a third call of the interaction completes: the stitch no longer matches and is made again
    _, joined = _call(service, backend, "ix-join", T0 + 90, (CUSTOMER, "203"), 3)
    drain(service)
    second = _row(service, "ix-join")
    assert second.state == COMPLETED and [c["call_id"] for c in second.chapters][-1] == joined
    assert second.signature != first.signature and second.storage_key != first.storage_key
    assert storage.stat(second.storage_key) is not None
    assert storage.stat(first.storage_key) is None, "the replaced file is deleted"

    # retention deletes every member's recording: the stitched file goes with them
    with service.ctx.sessions() as s:
        rec_ids = list(s.scalars(select(Recording.id).where(Recording.call.has(interaction_id="ix-join"))))
    for rec_id in rec_ids:
        assert delete_recording(service.ctx, rec_id, "test", actor="test")
        service.pipeline.notify("recording.deleted", rec_id)
    drain(service)
    gone = _row(service, "ix-join")
    assert gone.state == DELETED and gone.storage_key == "" and gone.chapters == []
    assert storage.stat(second.storage_key) is None


@pytest.mark.slow
def test_a_lost_stitch_message_is_queued_again_by_the_sweep(service: Service, backend: Backend) -> None:
    _call(service, backend, "ix-lost", T0, (CUSTOMER, "201"), 1)
    drain(service)
    row = stitches.request(service.ctx, service.queue, _domain_id(service), "ix-lost")
    while service.queue.huey.dequeue() is not None:  # the message is lost
        pass
    assert stitch.sweep(service.pipeline) == 0, "queued a moment ago: its message may still be on its way"
    service.ctx.clock.advance(service.ctx.config.requeue_after_s + 1)  # type: ignore[attr-defined]
    assert stitch.sweep(service.pipeline) == 1
    drain(service)
    assert _row(service, "ix-lost").state == COMPLETED and row.id == _row(service, "ix-lost").id


# --- through the API ---------------------------------------------------------------------------------


@pytest.fixture
def client(service: Service) -> Iterator[TestClient]:
    with TestClient(create_app(service)) as made:
        yield made


def _key(service: Service, domain: str) -> dict[str, str]:
    with transaction(service.ctx.sessions) as s:
        row = ensure_domain(s, domain, service.ctx.clock.now())
        _, secret = queries.create_key(s, row.id, service.ctx.clock.now())
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.slow
def test_the_api_asks_for_the_stitch_serves_it_with_range_and_hides_it_from_other_domains(
    service: Service, backend: Backend, client: TestClient
) -> None:
    set_settings(service, "acme", {"storage": backend.storage_settings()})
    acme, other = _key(service, "acme"), _key(service, "other")
    id1 = _call(service, backend, "ix-api", T0, (CUSTOMER, "201"), 1, domain="acme")[1]
    id2 = _call(service, backend, "ix-api", T0 + 50, (CUSTOMER, "202"), 2, domain="acme")[1]
    drain(service)
    url = "/api/v1/interactions/ix-api/stitched"

    asked = client.get(url, headers=acme)
    assert asked.status_code == 202, asked.text
    body = asked.json()
    assert body["state"] == "queued" and body["calls"] == [id1, id2]
    assert body["customer"]["number"] == CUSTOMER
    early = client.get(url + "/audio", headers=acme)
    assert early.status_code == 409 and early.headers["retry-after"] and "not ready" in early.json()["detail"]

    drain(service)
    done = client.get(url, headers=acme)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["state"] == "completed" and body["format"] == "mp3" and body["bytes"] > 0
    assert [c["call_id"] for c in body["chapters"]] == [id1, id2]
    whole = client.get(url + "/audio", headers=acme)
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/mpeg"
    assert len(whole.content) == body["bytes"]
    part = client.get(url + "/audio", headers={**acme, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{body['bytes']}"

    # another domain's key: exactly as absent as an interaction that does not exist
    for path in (url, url + "/audio"):
        hidden, missing = client.get(path, headers=other), client.get(path.replace("ix-api", "nope"), headers=other)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["detail"] == "no interaction 'ix-api'"
    assert client.post(url, headers=other).status_code == 404

    # POST makes it again
    again = client.post(url, headers=acme)
    assert again.status_code == 202 and again.json()["state"] == "queued"
    drain(service)
    assert client.get(url, headers=acme).json()["state"] == "completed"
    assert _row(service, "ix-api", "acme").attempts == 1


# --- who the customer is ------------------------------------------------------------------------------


def _fake_call(call_id: str, direction: str, *parties: tuple[str, str, str]) -> Call:
    return Call(id=call_id, direction=direction,
                parties=[Party(label=label, role=role, number=number) for label, role, number in parties])  # fmt: skip


def test_the_customer_is_the_number_in_every_call_whatever_its_role() -> None:
    calls = [
        _fake_call("1", "inbound", ("A", "caller", CUSTOMER), ("B", "callee", "201")),
        _fake_call("2", "", ("A", "caller", "202"), ("B", "callee", CUSTOMER)),
        _fake_call("3", "", ("P1", "participant", "202"), ("P2", "participant", CUSTOMER),
                   ("P3", "participant", "203")),
    ]  # fmt: skip
    assert stitches.customers(calls) == {"1": {"A"}, "2": {"B"}, "3": {"P2"}}


def test_without_one_common_number_the_external_party_then_the_first_caller_is_the_customer() -> None:
    calls = [
        _fake_call("1", "inbound", ("A", "caller", "111"), ("B", "callee", "201")),
        _fake_call("2", "outbound", ("A", "caller", "202"), ("B", "callee", "222")),
        _fake_call("3", "", ("A", "caller", "203"), ("B", "callee", "111")),
        _fake_call("4", "", ("A", "caller", "204"), ("B", "callee", "205")),
    ]
    assert stitches.customers(calls) == {"1": {"A"}, "2": {"B"}, "3": {"B"}, "4": {"A"}}
