"""SRTP tapes through the service: the worker opens the sealed keys with the service's box; a wrong key gives
a completed recording whose reason says which stream is silent; keys sealed with another secret fail the
recording at once with that sentence. No key in any reason or stream figure."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from callrec.db.schema import COMPLETED, FAILED, Call, Recording
from callrec.secretbox import SecretBox, new_key
from callrec.service.pipeline import Service
from tests.service.backends import Backend
from tests.service.conftest import drain
from tests.support import srtp_calls, synth

pytestmark = pytest.mark.slow  # the pipeline mixing real calls (a second each)

SUITE = "AES_CM_128_HMAC_SHA1_80"


def _tape(backend: Backend, box: SecretBox, sealed: dict[str, bytes] | None = None) -> tuple[Path, dict[str, bytes]]:
    start = time.time()
    built = synth.build(synth.Scenario(duration=2.0), base_time=start)
    keys = {"A": secrets.token_bytes(30), "B": secrets.token_bytes(30)}
    day = time.gmtime(start)
    folder = backend.config.data_dir / "tapes" / f"{day.tm_year:04d}/{day.tm_mon:02d}/{day.tm_mday:02d}"
    call_id = f"srtp-{secrets.token_hex(4)}@test"
    tape = srtp_calls.srtp_tape(folder / call_id.replace("@", "_"), built, SUITE, keys, box, sealed, call_id)
    return tape, keys


def _outcome(service: Service, call_id: str) -> tuple[Recording, list[dict[str, object]]]:
    with service.ctx.sessions() as s:
        rec = s.scalar(select(Recording).where(Recording.call_id == call_id))
        assert rec is not None
        call = s.get(Call, call_id)
        assert call is not None
        return rec, [dict(row.quality) for row in call.streams]


def _no_key_in(keys: dict[str, bytes], *texts: str) -> None:
    for key in keys.values():
        for shown in (key.hex(), base64.b64encode(key).decode()):
            assert all(shown not in t for t in texts)


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_the_worker_opens_the_keys_with_the_services_box(service: Service, backend: Backend) -> None:
    tape, keys = _tape(backend, service.ctx.box)
    call_id = service.pipeline.tape_closed(tape)
    assert drain(service) == 1
    rec, quality = _outcome(service, call_id)
    assert rec.state == COMPLETED and rec.reason == "", rec.reason
    assert rec.duration_s > 1.5
    assert all(q["packets"] and q["srtp_auth_failures"] == 0 for q in quality)
    _no_key_in(keys, rec.reason, json.dumps(quality))


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_a_wrong_key_completes_with_the_reason(service: Service, backend: Backend) -> None:
    wrong = {"A": secrets.token_bytes(30)}
    tape, keys = _tape(backend, service.ctx.box, sealed=None)
    # the SRC's key for A's stream, as sealed, is not the one its media was protected with
    info = json.loads((tape / "call.json").read_text())
    from callrec.media.srtp_keys import seal_keys
    from callrec.wire.sdes import CryptoAttribute, KeyParam

    info["srtp"][0] = seal_keys(service.ctx.box, [(0, CryptoAttribute(1, SUITE, (KeyParam(wrong["A"]),)))])[0]
    (tape / "call.json").write_text(json.dumps(info))
    call_id = service.pipeline.tape_closed(tape)
    assert drain(service) == 1
    rec, quality = _outcome(service, call_id)
    assert rec.state == COMPLETED
    assert (
        rec.reason == "stream 0 (from A): SRTP authentication failed for every packet: wrong key; its audio is silence"
    )
    by_failures = sorted(int(q["srtp_auth_failures"]) for q in quality)  # type: ignore[call-overload]
    assert by_failures[0] == 0 and by_failures[1] > 50
    _no_key_in({**keys, **wrong}, rec.reason, json.dumps(quality))


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_keys_sealed_with_another_secret_fail_the_recording_at_once(service: Service, backend: Backend) -> None:
    tape, keys = _tape(backend, SecretBox(new_key()))
    call_id = service.pipeline.tape_closed(tape)
    drain(service)
    rec, _ = _outcome(service, call_id)
    assert rec.state == FAILED and rec.attempts == 1
    assert "cannot be opened with this service's secret" in rec.reason
    _no_key_in(keys, rec.reason)
