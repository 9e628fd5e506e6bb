"""Recordings and their audio: download, HTTP Range, conversion, re-mix; ffprobe is the oracle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from callrec.db.schema import Recording
from callrec.files import tape
from callrec.files.scan import calls_in_capture
from callrec.jobs.retention import delete_recording
from callrec.service.schedule import DAYS
from tests.api.conftest import Api, Captures, Mixed, Tenant, detail

RECORDINGS = "/api/v1/recordings"


def probe(data: bytes, tmp_path: Path) -> dict[str, Any]:
    """What ffprobe makes of a file (container, codec, channels, rate), and its length as ffmpeg decodes it."""
    path = tmp_path / "probe.bin"
    path.write_bytes(data)
    entries = "stream=codec_name,channels,sample_rate:format=format_name"
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    info = json.loads(out.stdout)
    stream = info["streams"][0]
    channels, rate = int(stream["channels"]), int(stream["sample_rate"])
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"], check=True,
                         capture_output=True).stdout  # fmt: skip
    return {"format": info["format"]["format_name"], "codec": stream["codec_name"], "channels": channels,
            "rate": rate, "duration": len(pcm) / (2 * channels * rate)}  # fmt: skip


@pytest.fixture(scope="module")
def full(api: Api, mixed: Mixed) -> bytes:
    answer = api.client.get(f"{RECORDINGS}/{mixed.recording_id}/audio", headers=mixed.tenant.headers)
    assert answer.status_code == 200
    content: bytes = answer.content
    return content


def test_the_recording_json(api: Api, mixed: Mixed, other: Tenant) -> None:
    answer = api.client.get(f"{RECORDINGS}/{mixed.recording_id}", headers=mixed.tenant.headers)
    assert answer.status_code == 200
    body = answer.json()
    assert body["id"] == mixed.recording_id and body["call"] == mixed.call_id and body["state"] == "completed"
    foreign = api.client.get(f"{RECORDINGS}/{mixed.recording_id}", headers=other.headers)
    assert foreign.status_code == 404 and detail(foreign) == f"no recording {mixed.recording_id!r}"
    missing = api.client.get(f"{RECORDINGS}/{'f' * 32}", headers=mixed.tenant.headers)
    assert missing.status_code == 404 and detail(missing) == f"no recording {'f' * 32!r}"


def test_the_whole_file_decodes_as_stereo_mp3(api: Api, mixed: Mixed, tmp_path: Path) -> None:
    answer = api.client.get(f"{RECORDINGS}/{mixed.recording_id}/audio", headers=mixed.tenant.headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "audio/mpeg"
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.headers["content-disposition"] == 'attachment; filename="call-1_test.mp3"'
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert len(answer.content) == api.card(mixed.tenant.headers, mixed.call_id)["recording"]["bytes"]
    found = probe(answer.content, tmp_path)
    assert found["format"] == "mp3" and found["codec"] == "mp3" and found["channels"] == 2
    assert found["duration"] == pytest.approx(2.5, abs=0.1)


@pytest.mark.parametrize(
    ("header", "lo", "hi"),
    [("bytes=100-1099", 100, 1100), ("bytes=4000-", 4000, None), ("bytes=-500", -500, None),
     ("bytes=-99999999", 0, None), ("bytes=0-0", 0, 1), ("bytes=10-99999999", 10, None)],
)  # fmt: skip
def test_a_range_is_206_with_that_slice(
    api: Api, mixed: Mixed, full: bytes, header: str, lo: int, hi: int | None
) -> None:
    answer = api.client.get(
        f"{RECORDINGS}/{mixed.recording_id}/audio", headers={**mixed.tenant.headers, "Range": header}
    )
    assert answer.status_code == 206
    expected = full[lo:hi] if lo >= 0 else full[lo:]
    assert answer.content == expected
    start = lo if lo >= 0 else len(full) + lo
    assert answer.headers["content-range"] == f"bytes {start}-{start + len(expected) - 1}/{len(full)}"
    assert int(answer.headers["content-length"]) == len(expected)


def test_an_unsatisfiable_range_is_416(api: Api, mixed: Mixed, full: bytes) -> None:
    for header in (f"bytes={len(full)}-", "bytes=-0"):
        answer = api.client.get(f"{RECORDINGS}/{mixed.recording_id}/audio",
                                headers={**mixed.tenant.headers, "Range": header})  # fmt: skip
        assert answer.status_code == 416, header
        assert answer.headers["content-range"] == f"bytes */{len(full)}"


def test_several_ranges_or_a_foreign_unit_get_the_whole_file(api: Api, mixed: Mixed, full: bytes) -> None:
    for header in ("bytes=0-9,20-29", "items=0-1", "bytes=9-3"):
        answer = api.client.get(f"{RECORDINGS}/{mixed.recording_id}/audio",
                                headers={**mixed.tenant.headers, "Range": header})  # fmt: skip
        assert answer.status_code == 200 and answer.content == full, header


def test_conversion_to_wav_is_made_once_and_served_with_range(api: Api, mixed: Mixed, tmp_path: Path) -> None:
    path = f"{RECORDINGS}/{mixed.recording_id}/audio?format=wav"
    answer = api.client.get(path, headers=mixed.tenant.headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "audio/wav"
    assert answer.headers["content-disposition"] == 'attachment; filename="call-1_test.wav"'
    found = probe(answer.content, tmp_path)
    assert found["format"] == "wav" and found["codec"] == "pcm_s16le" and found["channels"] == 2
    assert found["duration"] == pytest.approx(2.5, abs=0.1)
    (cached,) = (api.service.ctx.config.data_dir / "cache").glob(f"{mixed.recording_id}.*.wav")
    made = cached.stat().st_ino
    part = api.client.get(path, headers={**mixed.tenant.headers, "Range": "bytes=44-143"})
    assert part.status_code == 206 and part.content == answer.content[44:144]
    assert cached.stat().st_ino == made  # the second request reused the cached file (a new one is a new inode)


def test_a_bad_format_is_422_and_another_domain_is_404(api: Api, mixed: Mixed, other: Tenant) -> None:
    bad = api.client.get(f"{RECORDINGS}/{mixed.recording_id}/audio?format=ogg", headers=mixed.tenant.headers)
    assert bad.status_code == 422 and detail(bad) == "format: Input should be 'mp3' or 'wav'"
    foreign = api.client.get(f"{RECORDINGS}/{mixed.recording_id}/audio", headers=other.headers)
    assert foreign.status_code == 404 and detail(foreign) == f"no recording {mixed.recording_id!r}"


def test_a_deleted_recording_is_410(api: Api, tenant: Tenant, captures: Captures) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    rec_id = api.card(tenant.headers, call_id)["recording"]["id"]
    assert api.client.get(f"{RECORDINGS}/{rec_id}/audio?format=wav", headers=tenant.headers).status_code == 200
    assert delete_recording(api.service.ctx, rec_id, "test", actor="test")
    answer = api.client.get(f"{RECORDINGS}/{rec_id}/audio", headers=tenant.headers)
    assert answer.status_code == 410 and detail(answer) == "the recording was deleted"
    assert not list((api.service.ctx.config.data_dir / "cache").glob(f"{rec_id}.*"))


def test_storage_losing_the_file_is_503(api: Api, tenant: Tenant, captures: Captures) -> None:
    (call_id,) = api.upload(tenant.headers, captures.one)
    rec_id = api.card(tenant.headers, call_id)["recording"]["id"]
    with api.service.ctx.sessions() as s:
        rec = s.get(Recording, rec_id)
        assert rec is not None
        stored = api.service.ctx.storage(rec.storage).local_path(rec.storage_key)
    assert stored is not None
    stored.unlink()
    answer = api.client.get(f"{RECORDINGS}/{rec_id}/audio", headers=tenant.headers)
    assert answer.status_code == 503
    assert detail(answer) == "storage cannot be reached at the moment; try again later"


# --- a call still being recorded, and re-mixing ----------------------------------------------------------


def _open_tape(api: Api, tenant: Tenant, captures: Captures, folder: Path) -> str:
    """A call whose tape is still open (as the recorder reports it): its recording is in state recording."""
    info = calls_in_capture(captures.one)[0]
    info.domain, info.closed_cleanly, info.ended_at = tenant.name, False, None
    folder.mkdir(parents=True)
    (folder / tape.MEDIA_FILE).write_bytes(captures.one.read_bytes())
    tape.write_info(folder, info)
    api.service.pipeline.tape_opened(folder)
    (call,) = api.client.get("/api/v1/calls", headers=tenant.headers, params={"state": "recording"}).json()["items"]
    return str(call["id"])


def test_a_recording_in_progress_is_409(api: Api, tenant: Tenant, captures: Captures, tmp_path: Path) -> None:
    call_id = _open_tape(api, tenant, captures, tmp_path / "open-tape")
    rec_id = api.card(tenant.headers, call_id)["recording"]["id"]
    answer = api.client.get(f"{RECORDINGS}/{rec_id}/audio", headers=tenant.headers)
    assert answer.status_code == 409 and detail(answer) == "the recording is recording"
    remix = api.client.post(f"/api/v1/calls/{call_id}/remix", headers=tenant.headers)
    assert remix.status_code == 409 and detail(remix) == "the call is still being recorded"


def test_remix_makes_a_new_recording_with_other_settings(api: Api, captures: Captures, tmp_path: Path) -> None:
    owner = api.tenant(settings={"keep_tape_days": None})
    (call_id,) = api.upload(owner.headers, captures.one)
    first = api.card(owner.headers, call_id)["recording"]
    answer = api.client.post(f"/api/v1/calls/{call_id}/remix", headers=owner.headers,
                             json={"format": "wav", "codec": "alaw"})  # fmt: skip
    assert answer.status_code == 202
    made = answer.json()
    assert made["state"] == "queued" and made["format"] == "wav" and made["id"] != first["id"]
    api.run_jobs()
    card = api.card(owner.headers, call_id)
    assert card["recording"]["id"] == made["id"] and card["recording"]["state"] == "completed"
    assert [r["id"] for r in card["recordings"]] == [first["id"], made["id"]]
    audio = api.client.get(f"{RECORDINGS}/{made['id']}/audio", headers=owner.headers)
    found = probe(audio.content, tmp_path)
    assert found["codec"] == "pcm_alaw" and found["channels"] == 2 and found["rate"] == 8000


def test_remix_does_not_wait_for_the_mixing_window(api: Api, captures: Captures) -> None:
    owner = api.tenant(settings={"keep_tape_days": None})
    (call_id,) = api.upload(owner.headers, captures.one)
    # a window three days away: the domain's own mixing waits, a re-mix asked for through the API does not
    day = DAYS[(api.service.ctx.clock.now().weekday() + 3) % 7]
    window = {"mode": "windows", "timezone": "UTC", "windows": [{"days": [day], "from": "01:00", "to": "02:00"}]}
    put = api.client.put(f"/api/v1/domains/{owner.name}/settings", headers=owner.headers, json={"schedule": window})
    assert put.status_code == 200
    made = api.client.post(f"/api/v1/calls/{call_id}/remix", headers=owner.headers).json()
    api.run_jobs()
    rec = api.client.get(f"{RECORDINGS}/{made['id']}", headers=owner.headers).json()
    assert rec["state"] == "completed"


def test_remix_checks_its_settings_the_tape_and_the_domain(
    api: Api, mixed: Mixed, other: Tenant, captures: Captures
) -> None:
    path = f"/api/v1/calls/{mixed.call_id}/remix"
    bad = api.client.post(path, headers=mixed.tenant.headers, json={"bitrate": 20})
    assert bad.status_code == 422 and detail(bad) == "bitrate: Input should be 8, 16, 24 or 32"
    foreign = api.client.post(path, headers=other.headers, json={})
    assert foreign.status_code == 404 and detail(foreign) == f"no call {mixed.call_id!r}"
    # the default keep_tape_days is 0: the tape went once the first recording was stored
    gone = api.client.post(path, headers=mixed.tenant.headers, json={"format": "wav"})
    assert gone.status_code == 409
    assert detail(gone) == "the call's raw tape was deleted, so it cannot be mixed again"
