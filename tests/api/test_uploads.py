"""Uploads: captures and tapes in, calls out; bad files, limits and domains refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from callrec.app import create_app
from callrec.files.scan import calls_in_capture
from tests.api.conftest import Api, Captures, Tenant, detail
from tests.support import synth

UPLOADS = "/api/v1/uploads"


def _post(api: Api, headers: dict[str, str], data: bytes, **fields: str) -> httpx.Response:
    answer: httpx.Response = api.client.post(UPLOADS, headers=headers, files={"file": ("c.pcap", data)},
                                             data=fields or None)  # fmt: skip
    return answer


def _staging_is_empty(api: Api) -> bool:
    folder = api.service.ctx.config.data_dir / "uploads"
    return not folder.exists() or not any(folder.iterdir())


def test_calls_in_capture_finds_each_sip_call_in_order(captures: Captures) -> None:
    found = calls_in_capture(captures.seven)
    assert [c.call_id for c in found] == [f"call-{k}@test" for k in range(7)]
    assert [c.parties[0].number for c in found] == [f"555000{k}" for k in range(7)]
    assert all(c.source == "upload" and c.closed_cleanly and len(c.streams) == 2 for c in found)
    assert calls_in_capture(captures.no_sip) == []
    assert [c.call_id for c in calls_in_capture(captures.pcapng)] == ["call-1@test"]


def test_a_capture_becomes_calls_of_the_keys_domain(
    api: Api, tenant: Tenant, other: Tenant, captures: Captures
) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    card = api.card(tenant.headers, call_id)
    assert card["domain"] == tenant.name and card["source"] == "upload"
    assert card["recording"]["state"] == "completed"
    assert api.client.get(f"/api/v1/calls/{call_id}", headers=other.headers).status_code == 404
    assert _staging_is_empty(api)
    assert not list((api.service.ctx.config.data_dir / "tapes").glob("*/*/*/upload-*"))  # all in storage


def test_a_pcapng_capture_is_accepted(api: Api, tenant: Tenant, captures: Captures) -> None:
    (call_id,) = api.upload(tenant.headers, captures.pcapng)
    assert api.card(tenant.headers, call_id)["recording"]["state"] == "completed"


def test_a_tape_is_media_and_call_json(api: Api, tenant: Tenant, captures: Captures) -> None:
    info = calls_in_capture(captures.seven)[2]
    data = info.to_json() | {"domain": "elsewhere", "interaction_id": "pbx-7", "source": "siprec"}
    (call_id,) = api.upload(tenant.headers, captures.seven, call_json=json.dumps(data).encode())
    card = api.card(tenant.headers, call_id)
    assert card["call_id"] == "call-2@test" and card["interaction_id"] == "pbx-7"
    assert card["domain"] == tenant.name and card["source"] == "upload"
    assert card["recording"]["state"] == "completed"


def test_the_file_must_be_a_capture(api: Api, tenant: Tenant) -> None:
    answer = _post(api, tenant.headers, b"hello, this is not a capture")
    assert answer.status_code == 400
    assert detail(answer) == "the file is not a pcap or pcapng capture"
    short = _post(api, tenant.headers, b"\xd4\xc3\xb2\xa1\x02\x00")
    assert short.status_code == 400
    assert detail(short) == "the capture cannot be read: capture header is truncated"
    assert _staging_is_empty(api)


def test_a_capture_without_sip_is_422(api: Api, tenant: Tenant, captures: Captures) -> None:
    answer = _post(api, tenant.headers, captures.no_sip.read_bytes())
    assert answer.status_code == 422
    assert detail(answer) == "no SIP call found in the capture"


def test_a_bad_call_json_is_400(api: Api, tenant: Tenant, captures: Captures) -> None:
    files = {"file": ("media.pcap", captures.one.read_bytes()), "call": ("call.json", b'{"parties": []}')}
    answer = api.client.post(UPLOADS, headers=tenant.headers, files=files)
    assert answer.status_code == 400
    assert detail(answer).startswith("call: the call field is not a valid call.json: ") and "call_ids" in detail(answer)


def test_the_body_must_be_a_whole_multipart_form_with_a_file(api: Api, tenant: Tenant) -> None:
    no_file = api.client.post(UPLOADS, headers=tenant.headers, files={"other": ("x", b"1")})
    assert no_file.status_code == 422 and detail(no_file) == "file: the upload has no file field"
    as_json = api.client.post(UPLOADS, headers=tenant.headers, json={"file": "x"})
    assert as_json.status_code == 415
    assert detail(as_json) == "the upload must be multipart/form-data with a file field"
    cut = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n\xd4\xc3\xb2\xa1'
    answer = api.client.post(UPLOADS, headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=b"},
                             content=cut)  # fmt: skip
    assert answer.status_code == 400 and detail(answer) == "the multipart body is incomplete"
    assert _staging_is_empty(api)


def test_a_file_past_the_limit_is_413(api: Api, tenant: Tenant, captures: Captures) -> None:
    data = captures.one.read_bytes()
    with TestClient(create_app(api.service, max_upload_bytes=len(data) - 1)) as small:
        answer = small.post(UPLOADS, headers=tenant.headers, files={"file": ("c.pcap", data)})
        assert answer.status_code == 413
        assert detail(answer) == f"the file is larger than the limit of {len(data) - 1} bytes"
        # refused from its Content-Length before any byte is read
        huge = small.post(UPLOADS, headers={**tenant.headers, "Content-Length": str(10**12)}, content=b"")
        assert huge.status_code == 413
    assert _staging_is_empty(api)


def test_the_domain_field(api: Api, tenant: Tenant, other: Tenant, captures: Captures) -> None:
    data = captures.one.read_bytes()
    foreign = _post(api, tenant.headers, data, domain=other.name)
    assert foreign.status_code == 403
    assert detail(foreign) == "only an admin key may upload into another domain"
    (own,) = api.upload(tenant.headers, captures.one, domain=tenant.name)
    assert api.card(tenant.headers, own)["domain"] == tenant.name
    (chosen,) = api.upload(api.admin, captures.one, domain=other.name)
    assert api.card(other.headers, chosen)["domain"] == other.name
    (default,) = api.upload(api.admin, captures.one)
    assert api.card(api.admin, default)["domain"] == "default"
    missing = _post(api, api.admin, data, domain="no-such-domain")
    assert missing.status_code == 404
    assert detail(missing) == "no domain named 'no-such-domain'"


def test_uploading_needs_a_key(api: Api, captures: Captures) -> None:
    answer = api.client.post(UPLOADS, files={"file": ("c.pcap", captures.one.read_bytes())})
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"] == "Bearer"


def test_nul_characters_in_signalling_are_dropped(api: Api, tenant: Tenant, tmp_path: Path) -> None:
    built = synth.build(synth.Scenario(call_id="nul-call@test", duration=1.0))
    datagrams = [
        (ts, src, sport, dst, dport, payload.replace(b"nul-call@", b"nul\x00call@") if sport == 5060 else payload)
        for ts, src, sport, dst, dport, payload in built.datagrams
    ]
    capture = synth.write_pcap(tmp_path / "nul.pcap", datagrams)
    (call_id,) = api.upload(tenant.headers, capture)
    card = api.card(tenant.headers, call_id)
    assert card["call_id"] == "nulcall@test"
    info = calls_in_capture(capture)[0].to_json() | {"interaction_id": "pbx\x00-1"}
    (tape_call,) = api.upload(tenant.headers, capture, call_json=json.dumps(info).encode())
    assert api.card(tenant.headers, tape_call)["interaction_id"] == "pbx-1"
