"""Storage isolation between domains (issue 12 H1), written as the attack: a hostile domain ``evil`` aims its
key templates at domain ``acme``'s objects and uploads a call with the same Call-ID as acme's.

Whatever its templates say, evil's objects land under its own prefix (``d/<domain id>/``): acme's audio
stays acme's, evil's retention deletes only evil's own object, bad templates are refused with a 422 that
names the field and why, and a stored object that is not what its row stored is never served.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from callrec.db.schema import Call, Domain, Recording
from callrec.jobs import retention
from callrec.storage import keys
from tests.api.conftest import Api, Captures, Tenant, detail
from tests.support import synth

DOMAINS = "/api/v1/domains"


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _domain_id(api: Api, name: str) -> int:
    with api.service.ctx.sessions() as s:
        domain = s.query(Domain).filter_by(name=name).one()
        return domain.id


def _recording(api: Api, rec_id: str) -> Recording:
    with api.service.ctx.sessions() as s:
        rec = s.get(Recording, rec_id)
        assert rec is not None
        s.expunge(rec)
        return rec


def _audio(api: Api, tenant: Tenant, rec_id: str, **params: str) -> bytes:
    answer = api.client.get(f"/api/v1/recordings/{rec_id}/audio", headers=tenant.headers, params=params)
    assert answer.status_code == 200, answer.text
    return answer.content


def _settings(api: Api, tenant: Tenant, body: dict[str, object]) -> object:
    return api.client.put(f"{DOMAINS}/{tenant.name}/settings", headers=tenant.headers, json=body)


def _local_object(api: Api, rec: Recording) -> Path:
    path = api.service.ctx.storage(rec.storage).local_path(rec.storage_key)
    assert path is not None, f"recording {rec.id} has no object under {rec.storage_key}"
    return path


def _replace(path: Path, data: bytes) -> None:
    """Put ``data`` in place of the file the way another writer would (a new file renamed over it)."""
    tmp = path.with_name(".swap")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.mark.slow
def test_a_template_aimed_at_another_domains_keys_never_reaches_its_objects(
    api: Api, captures: Captures, tmp_path: Path
) -> None:
    acme, evil = api.tenant(), api.tenant()
    (acme_call,) = api.upload(acme.headers, captures.one)
    acme_rec = _recording(api, api.card(acme.headers, acme_call)["recording"]["id"])
    assert acme_rec.state == "completed"
    acme_audio = _audio(api, acme, acme_rec.id)
    assert _md5(acme_audio) == acme_rec.md5
    acme_key = acme_rec.storage_key
    with api.service.ctx.sessions() as s:
        acme_tape = s.get(Call, acme_call)
        assert acme_tape is not None
        acme_tape_key = acme_tape.tape_key

    # evil's template renders acme's recording key exactly for a call with acme's Call-ID (call-1@test),
    # and its tape template names acme's folder
    call_part = keys.sanitise("call-1@test")
    assert call_part in acme_key
    hostile = {"recording_template": acme_key.replace(call_part, "{call_id}", 1),
               "tape_template": f"tapes/{acme.name}/{{yyyy}}/{{mm}}/{{dd}}/{{tape}}"}  # fmt: skip
    accepted = _settings(api, evil, {"storage": hostile, "retention": {"days": 1}})
    assert accepted.status_code == 200, accepted.text  # type: ignore[attr-defined]

    # a capture with the same Call-ID, the same day, other audio
    other = synth.build(synth.Scenario(call_id="call-1@test", duration=4.0, seed=99))
    (evil_call,) = api.upload(evil.headers, synth.write_pcap(tmp_path / "evil.pcap", other.datagrams))
    evil_rec = _recording(api, api.card(evil.headers, evil_call)["recording"]["id"])
    assert evil_rec.state == "completed"
    assert _md5(_audio(api, evil, evil_rec.id)) == evil_rec.md5 != acme_rec.md5

    # acme still gets its own audio, byte for byte
    assert _md5(_audio(api, acme, acme_rec.id)) == _md5(acme_audio)
    # every object evil caused lies under evil's own prefix, which its templates cannot name
    evil_prefix = keys.domain_prefix(_domain_id(api, evil.name))
    with api.service.ctx.sessions() as s:
        call = s.get(Call, evil_call)
        assert call is not None
        evil_keys = [evil_rec.storage_key, call.tape_key]
    assert all(key.startswith(evil_prefix) for key in evil_keys), evil_keys
    assert acme_key not in evil_keys and acme_tape_key not in evil_keys
    assert acme_key.startswith(keys.domain_prefix(_domain_id(api, acme.name)))

    # evil's retention deletes evil's recording, and only its object
    retention.sweep(api.service.ctx)
    assert _recording(api, evil_rec.id).state == "deleted"
    assert api.service.ctx.storage(evil_rec.storage).stat(evil_rec.storage_key) is None
    assert _recording(api, acme_rec.id).state == "completed"
    kept = api.service.ctx.storage(acme_rec.storage).stat(acme_key)
    assert kept is not None and (kept.size, kept.md5) == (acme_rec.bytes, acme_rec.md5)
    assert _audio(api, acme, acme_rec.id) == acme_audio


@pytest.mark.parametrize(
    ("field", "template", "reason"),
    [
        ("recording_template", "../acme/{call_id}", "must not contain '.' or '..' path steps"),
        ("recording_template", "recordings/{domain}/../../acme/{call_id}", "must not contain '.' or '..' path steps"),
        ("recording_template", "/var/lib/callrec/recordings/{call_id}", "must be relative"),
        ("recording_template", "recordings//{call_id}", "must not have an empty path segment"),
        ("recording_template", "recordings/{call_id}/", "must not have an empty path segment"),
        ("recording_template", "recordings\\..\\acme\\{call_id}", "must not contain a backslash"),
        ("recording_template", "recordings/{domain_id}/{call_id}", "unknown field {domain_id}"),
        ("recording_template", "recordings/{domain.name}/{call_id}", "unknown field {domain.name}"),
        ("recording_template", "recordings/{domain}", "must contain {recording_id} or {call_id}"),
        ("tape_template", "../../acme/tapes/{tape}", "must not contain '.' or '..' path steps"),
        ("tape_template", "/tmp/{tape}", "must be relative"),
    ],
)
def test_bad_templates_are_422_naming_the_field_and_why(api: Api, field: str, template: str, reason: str) -> None:
    evil = api.tenant()
    answer = _settings(api, evil, {"storage": {field: template}})
    assert answer.status_code == 422, answer.text  # type: ignore[attr-defined]
    text = detail(answer)
    assert text.startswith(f"storage.{field}: "), text
    assert reason in text, text
    # nothing was kept
    shown = api.client.get(f"{DOMAINS}/{evil.name}/settings", headers=evil.headers).json()
    assert shown["storage"][field] == ""


def test_a_stored_object_that_is_not_the_rows_is_refused_on_read(api: Api, captures: Captures) -> None:
    acme = api.tenant()
    (call_id,) = api.upload(acme.headers, captures.one)
    rec = _recording(api, api.card(acme.headers, call_id)["recording"]["id"])
    original = _audio(api, acme, rec.id)
    path = _local_object(api, rec)
    url = f"/api/v1/recordings/{rec.id}/audio"

    # another writer's file of another size in its place
    _replace(path, b"ID3" + os.urandom(len(original) + 517))
    answer = api.client.get(url, headers=acme.headers)
    assert answer.status_code == 409 and answer.headers["content-type"] == "application/json", answer.text
    assert "does not match" in detail(answer) and f"the recording has {rec.bytes}" in detail(answer)
    ranged = api.client.get(url, headers=acme.headers | {"Range": "bytes=0-99"})
    assert ranged.status_code == 409
    converted = api.client.get(url, headers=acme.headers, params={"format": "wav"})
    assert converted.status_code == 409 and "does not match" in detail(converted)
    picture = api.client.get(f"/api/v1/recordings/{rec.id}/picture", headers=acme.headers)
    assert picture.status_code == 409 and "does not match" in detail(picture)

    # the same size, other content: the md5 tells
    _replace(path, original[:-16] + bytes(16))
    same_size = api.client.get(url, headers=acme.headers)
    assert same_size.status_code == 409 and f"the recording has {rec.md5}" in detail(same_size)

    # its own bytes back: served again
    _replace(path, original)
    assert _audio(api, acme, rec.id) == original
    assert len(_audio(api, acme, rec.id, format="wav")) > 0
    assert api.client.get(f"/api/v1/recordings/{rec.id}/picture", headers=acme.headers).status_code == 200


def test_a_deletion_leaves_an_object_another_row_stored_under_the_same_key(
    api: Api, captures: Captures, tmp_path: Path
) -> None:
    """Keys stored before the domain prefix keep their form, so two rows may still share one (an old
    collision): retention deleting one row removes the object only if it is that row's own."""
    acme, evil = api.tenant(), api.tenant()
    (acme_call,) = api.upload(acme.headers, captures.one)
    acme_rec = _recording(api, api.card(acme.headers, acme_call)["recording"]["id"])
    acme_audio = _audio(api, acme, acme_rec.id)
    assert _settings(api, evil, {"retention": {"days": 1}}).status_code == 200  # type: ignore[attr-defined]
    other = synth.build(synth.Scenario(call_id="call-1@test", duration=4.0, seed=99))
    (evil_call,) = api.upload(evil.headers, synth.write_pcap(tmp_path / "evil.pcap", other.datagrams))
    evil_rec = _recording(api, api.card(evil.headers, evil_call)["recording"]["id"])
    with api.service.ctx.sessions() as s:  # the row as an old collision left it: acme's key
        row = s.get(Recording, evil_rec.id)
        assert row is not None
        row.storage_key = acme_rec.storage_key
        s.commit()
    api.service.ctx.storage(evil_rec.storage).delete(evil_rec.storage_key)

    retention.sweep(api.service.ctx)
    assert _recording(api, evil_rec.id).state == "deleted"
    assert _recording(api, acme_rec.id).state == "completed"
    assert _audio(api, acme, acme_rec.id) == acme_audio
