"""The recorded call's original Call-ID(s) (SIPREC metadata) are kept on the call: call.json, the call card,
and ``GET /api/v1/calls?call_id=`` finds the call by any of them, as by any Call-ID of its dialogs
(SQLite and PostgreSQL: the ``api`` fixture runs on both)."""

from __future__ import annotations

import json
from pathlib import Path

from callrec.files.scan import calls_in_capture
from callrec.models import CallInfo
from tests.api.conftest import Api, Captures
from tests.mix.test_mix_topoh import through_topoh
from tests.support import synth

CALLS = "/api/v1/calls"


def _sip_ids(answer: object) -> list[str]:
    items = answer.json()["items"]  # type: ignore[attr-defined]
    return [item["call_id"] for item in items]


def test_original_call_ids_on_the_card_and_searchable(api: Api, captures: Captures) -> None:
    owner = api.tenant()
    info = calls_in_capture(captures.one)[0]
    info.call_ids = ["srs-leg@src.test", "second-dialog@src.test"]
    info.original_call_ids = ["6f1c0a2e-51f3@10.0.0.5", "ab30317f1a784dc48ff824d0d3715d86"]
    (call_id,) = api.upload(owner.headers, captures.one, call_json=json.dumps(info.to_json()).encode())
    card = api.card(owner.headers, call_id)
    assert card["call_id"] == "srs-leg@src.test"
    assert card["call_ids"] == ["srs-leg@src.test", "second-dialog@src.test"]
    assert card["original_call_ids"] == ["6f1c0a2e-51f3@10.0.0.5", "ab30317f1a784dc48ff824d0d3715d86"]
    for wanted in ("srs-leg@src.test", "second-dialog@src.test", "6f1c0a2e-51f3@10.0.0.5",
                   "ab30317f1a784dc48ff824d0d3715d86"):  # fmt: skip
        found = api.client.get(CALLS, headers=owner.headers, params={"call_id": wanted})
        assert [item["id"] for item in found.json()["items"]] == [call_id], wanted
    # not a prefix nor a part: the exact identifier only
    for other in ("6f1c0a2e-51f3", "second-dialog", "x"):
        assert api.client.get(CALLS, headers=owner.headers, params={"call_id": other}).json()["items"] == []


def test_another_domain_does_not_find_the_call_by_its_original_call_id(api: Api, captures: Captures) -> None:
    owner, stranger = api.tenant(), api.tenant()
    info = calls_in_capture(captures.one)[0]
    info.original_call_ids = ["private-original@pbx.test"]
    api.upload(owner.headers, captures.one, call_json=json.dumps(info.to_json()).encode())
    mine = api.client.get(CALLS, headers=owner.headers, params={"call_id": "private-original@pbx.test"})
    assert len(mine.json()["items"]) == 1
    theirs = api.client.get(CALLS, headers=stranger.headers, params={"call_id": "private-original@pbx.test"})
    assert theirs.json()["items"] == []


def test_a_call_without_original_call_ids_has_an_empty_list(api: Api, captures: Captures) -> None:
    owner = api.tenant()
    (call_id,) = api.upload(owner.headers, captures.one)
    assert api.card(owner.headers, call_id)["original_call_ids"] == []


def test_call_json_round_trip_and_old_call_json() -> None:
    info = CallInfo(call_ids=["a@b"], original_call_ids=["orig@pbx"])
    assert CallInfo.from_json(json.loads(json.dumps(info.to_json()))).original_call_ids == ["orig@pbx"]
    old = info.to_json()
    del old["original_call_ids"]
    assert CallInfo.from_json(old).original_call_ids == []


def test_openapi_documents_the_field(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    card = schema["components"]["schemas"]["CallCard"]
    assert card["properties"]["original_call_ids"]["type"] == "array"


def test_an_uploaded_topoh_capture_is_one_call_found_by_either_call_id(api: Api, tmp_path: Path) -> None:
    """A capture at a proxy that masks the Call-ID towards the callee: one call, searchable by both Call-IDs."""
    owner = api.tenant()
    scn = synth.Scenario(call_id="leg-1@10.0.0.1", duration=2.0)
    built = synth.build(scn)
    pcap = synth.write_pcap(tmp_path / "topoh.pcap", through_topoh(built, scn, "masked-leg-2@10.0.0.9"))
    (call_id,) = api.upload(owner.headers, pcap)
    card = api.card(owner.headers, call_id)
    assert card["call_ids"] == ["leg-1@10.0.0.1", "masked-leg-2@10.0.0.9"]
    assert card["recording"]["state"] == "completed", card["recording"]
    assert [p["label"] for p in card["parties"]] == ["A", "B"]
    for wanted in card["call_ids"]:
        found = api.client.get(CALLS, headers=owner.headers, params={"call_id": wanted})
        assert [item["id"] for item in found.json()["items"]] == [call_id], wanted
