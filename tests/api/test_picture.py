"""The picture of a recording: waveforms, who spoke when (per party, a conference's each participant),
cached beside the converted audio, and only for the domain that owns the recording."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from callrec.api import audio, picture
from callrec.db.engine import transaction
from callrec.db.schema import Recording, Stitch, StreamRow
from callrec.files.scan import calls_in_capture
from callrec.models import CallInfo, Party, Stream
from tests.api.conftest import Api, Captures, Mixed, Tenant, detail
from tests.support import synth


def _picture(api: Api, headers: dict[str, str], recording_id: str) -> dict[str, Any]:
    answer = api.client.get(f"/api/v1/recordings/{recording_id}/picture", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def stitched_cards(api: Api, tenant: Tenant, interaction: str) -> list[dict[str, Any]]:
    answer = api.client.get(f"/api/v1/interactions/{interaction}", headers=tenant.headers)
    assert answer.status_code == 200
    calls: list[dict[str, Any]] = answer.json()["calls"]
    return calls


def _spoken(segments: list[list[float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in segments)


def test_a_recordings_picture(api: Api, mixed: Mixed, other: Tenant) -> None:
    body = _picture(api, mixed.tenant.headers, mixed.recording_id)
    card = api.card(mixed.tenant.headers, mixed.call_id)
    assert abs(body["duration_s"] - card["recording"]["duration_s"]) < 0.2
    assert [c["name"] for c in body["channels"]] == ["left", "right"]
    for channel in body["channels"]:
        assert 100 <= len(channel["peaks"]) <= 1200
        assert all(-1 <= low <= high <= 1 for low, high in channel["peaks"])
        assert max(high for _, high in channel["peaks"]) > 0.1  # the synthetic voice is loud
    # the caller (100) left, the callee (200) right, each with the mixer's own segments
    speakers = {s["party"]: s for s in body["speakers"]}
    assert speakers["A"]["label"] == "Alice (100)" and speakers["A"]["channel"] == 0
    assert speakers["B"]["label"] == "200" and speakers["B"]["channel"] == 1
    by_party = {s["party"]: s["quality"]["speech"] for s in card["streams"]}
    assert speakers["A"]["segments"] == by_party["A"] and speakers["B"]["segments"] == by_party["B"]
    assert speakers["A"]["segments"] and speakers["B"]["segments"]
    assert body["chapters"] == []
    # made once: the cache file is what the next request reads
    (cached,) = (api.service.ctx.config.data_dir / "cache").glob(f"{mixed.recording_id}.*.picture.json")
    assert json.loads(cached.read_text())["duration_s"] == body["duration_s"]
    # another domain's key sees nothing, exactly as for a recording that does not exist
    for headers, rid in ((other.headers, mixed.recording_id), (mixed.tenant.headers, "0" * 32)):
        missing = api.client.get(f"/api/v1/recordings/{rid}/picture", headers=headers)
        assert missing.status_code == 404 and detail(missing) == f"no recording {rid!r}"
    assert api.client.get(f"/api/v1/recordings/{mixed.recording_id}/picture").status_code == 401


def test_without_numbers_people_are_named_as_a_public_link_shows_them(api: Api, mixed: Mixed) -> None:
    with api.service.ctx.sessions() as s:
        rec = s.get(Recording, mixed.recording_id)
        assert rec is not None
        public = picture.recording_picture(api.service.ctx, rec)
    assert [(p["party"], p["label"]) for p in public["speakers"]] == [("A", "Alice"), ("B", "Callee")]
    assert "100" not in json.dumps(public["speakers"]) and "200" not in json.dumps(public["speakers"])


def test_without_party_segments_the_channels_speak_for_the_parties(
    api: Api, tenant: Tenant, captures: Captures
) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    rec = api.card(tenant.headers, call_id)["recording"]
    with transaction(api.service.ctx.sessions) as s:  # a call mixed before the mixer measured speech
        for row in s.scalars(select(StreamRow).where(StreamRow.call_id == call_id)):
            row.quality = {k: v for k, v in row.quality.items() if k != "speech"}
    body = _picture(api, tenant.headers, rec["id"])
    left, right = body["speakers"]
    assert (left["party"], left["label"], left["channel"]) == ("A", "Alice (100)", 0)
    assert (right["party"], right["label"], right["channel"]) == ("B", "200", 1)
    # the synthetic voice talks through the whole call on both sides
    for speaker in (left, right):
        assert _spoken(speaker["segments"], 0, body["duration_s"]) > 0.5 * body["duration_s"]
    assert body["overlaps"] and body["silences"] == []


@pytest.mark.slow
def test_a_conference_shows_each_participant(api: Api, tenant: Tenant, tmp_path: Path) -> None:
    # A speaks first, then B, then C: three parties, every voice in both channels
    plan = synth.StreamPlan
    first = synth.build(synth.Scenario(call_id="conf@test", duration=9.0, a=plan("A", seed=1, stop=2.0),
                                       b=plan("B", seed=2, start=3.0, stop=5.0)))  # fmt: skip
    third = synth.build(synth.Scenario(call_id="conf-c@test", duration=9.0, a=plan("A", seed=3, start=6.0),
                                       b=plan("B", seed=4, silent=True), a_port=20002, b_port=30002))  # fmt: skip
    capture = synth.write_pcap(tmp_path / "conf.pcap", sorted(first.datagrams + third.media, key=lambda d: d[0]))
    found = calls_in_capture(capture)[0]
    pcma = found.streams[0].rtpmap
    info = CallInfo(
        call_ids=["conf@test"],
        parties=[Party("A", "caller", number="100"), Party("B", "callee", number="200"),
                 Party("C", "participant", number="300", name="Carol")],
        streams=[Stream("A", synth.B_IP, 30000, rtpmap=pcma), Stream("B", synth.A_IP, 20000, rtpmap=pcma),
                 Stream("C", synth.B_IP, 30002, rtpmap=pcma)],
        started_at=found.started_at, ended_at=found.ended_at, closed_cleanly=True,
    )  # fmt: skip
    (call_id,) = api.upload(tenant.headers, capture, call_json=json.dumps(info.to_json()).encode())
    rec = api.card(tenant.headers, call_id)["recording"]
    assert rec["state"] == "completed", rec
    body = _picture(api, tenant.headers, rec["id"])
    speakers = {s["party"]: s for s in body["speakers"]}
    assert [s["label"] for s in body["speakers"]] == ["100", "200", "Carol (300)"]
    assert all(s["channel"] is None for s in body["speakers"])  # voices share both channels
    t0 = first.t0
    turns = {"A": (first.t0, first.t0 + 2.0), "B": (t0 + 3.0, t0 + 5.0), "C": (t0 + 6.0, t0 + 9.0)}
    for party, (a, b) in turns.items():
        lo, hi = a - t0, b - t0
        spoken = speakers[party]["segments"]
        assert _spoken(spoken, lo, hi) > 0.5 * (hi - lo), (party, spoken)
        assert _spoken(spoken, 0, body["duration_s"]) - _spoken(spoken, lo - 0.5, hi + 0.5) == 0, (party, spoken)
    assert body["overlaps"] == []


def test_pictures_of_unfinished_and_deleted_recordings(api: Api, tenant: Tenant, captures: Captures) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one, mix=False)
    rec = api.card(tenant.headers, call_id)["recording"]
    waiting = api.client.get(f"/api/v1/recordings/{rec['id']}/picture", headers=tenant.headers)
    assert waiting.status_code == 409 and detail(waiting) == f"the recording is {rec['state']}"
    api.run_jobs()
    _picture(api, tenant.headers, rec["id"])
    (cached,) = (api.service.ctx.config.data_dir / "cache").glob(f"{rec['id']}.*.picture.json")
    audio.forget(api.service.ctx, rec["id"])  # what deleting a recording does to its cache
    assert not cached.exists()


def test_an_interactions_picture_has_its_chapters_and_the_customer_left(
    api: Api, tenant: Tenant, other: Tenant, captures: Captures
) -> None:
    for info in [c for k, c in enumerate(calls_in_capture(captures.seven)) if k in (2, 5)]:
        info.interaction_id = "ix-picture"
        api.upload(tenant.headers, captures.seven, call_json=json.dumps(info.to_json()).encode())
    url = "/api/v1/interactions/ix-picture/picture"
    waiting = api.client.get(url, headers=tenant.headers)  # asking for it asks for the stitch
    assert waiting.status_code == 409 and waiting.headers["Retry-After"]
    assert detail(waiting).startswith("the stitched recording is not ready")
    api.run_jobs()
    answer = api.client.get(url, headers=tenant.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    stitched = api.client.get("/api/v1/interactions/ix-picture/stitched", headers=tenant.headers).json()
    assert abs(body["duration_s"] - stitched["duration_s"]) < 0.2
    assert body["chapters"] == [{k: c[k] for k in ("call_id", "who", "from_s", "to_s")} for c in stitched["chapters"]]
    assert len(body["chapters"]) == 2
    customer, *employees = body["speakers"]
    assert customer["channel"] == 0 and stitched["customer"]["number"] in customer["label"]
    assert [e["label"] for e in employees] == [", ".join(c["who"]) for c in body["chapters"]]
    for employee, chapter in zip(employees, body["chapters"], strict=True):
        assert employee["channel"] == 1 and employee["segments"]
        assert all(chapter["from_s"] <= a < b <= chapter["to_s"] for a, b in employee["segments"])
    assert customer["segments"]
    # cached once, under the version (md5) of the stitched file
    (cached,) = (api.service.ctx.config.data_dir / "cache").glob("stitch-*.picture.json")
    assert json.loads(cached.read_text())["duration_s"] == body["duration_s"]
    # as a public link shows it: the same picture, people without their numbers
    with api.service.ctx.sessions() as s:
        row = s.scalar(select(Stitch).where(Stitch.interaction_id == "ix-picture"))
        assert row is not None
        public = picture.stitch_picture(api.service.ctx, row)
    assert public["channels"] == body["channels"] and public["silences"] == body["silences"]
    numbers = {p["number"] for c in stitched_cards(api, tenant, "ix-picture") for p in c["parties"]}
    # what names people (the ids are random hex, which may hold a number such as "200" by chance)
    shown = json.dumps([[s["label"] for s in public["speakers"]], [c["who"] for c in public["chapters"]]])
    assert numbers and not any(n in shown for n in numbers), shown
    assert public["speakers"][0]["label"] == "Customer"  # the synthetic customer has no name
    for headers, name in ((other.headers, "ix-picture"), (tenant.headers, "ix-none")):
        missing = api.client.get(f"/api/v1/interactions/{name}/picture", headers=headers)
        assert missing.status_code == 404 and detail(missing) == f"no interaction {name!r}"
