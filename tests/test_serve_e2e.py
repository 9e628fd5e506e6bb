"""End to end on embedded defaults: ``callrec serve``, a sipp SIPREC call, and within seconds a completed
recording on the call card whose audio downloads, decodes with ffmpeg and has each party in its channel."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.recorder.test_record_sipp import SENDER, _noise, _sipp
from tests.support.audio import decode, probe, xcorr
from tests.support.serve_proc import ServeProcess
from tests.test_sipp_capture import _sipp_pcap_dir, _sipp_reference

pytestmark = pytest.mark.slow  # real serve process, sipp

RATE = 8000
SECONDS_TO_COMPLETE = 10.0


def test_a_sipp_siprec_call_becomes_a_completed_recording_on_its_call_card(tmp_path: Path) -> None:
    pcap_dir = _sipp_pcap_dir()
    shutil.copy(pcap_dir / "g711a.pcap", tmp_path / "g711a.pcap")
    noise_path, noise = _noise(tmp_path)
    sender = f"{sys.executable} {SENDER} --payload {noise_path} --log {tmp_path / 'sent.log'}"
    with ServeProcess(tmp_path / "data") as serve:
        # the scenario labels its call with domain "acme" (X-Callrec-Domain): make it, with a key of its own
        assert serve.api.post("/api/v1/domains", json={"name": "acme"}).status_code == 201
        key = serve.api.post("/api/v1/domains/acme/keys", json={}).json()["key"]
        acme = httpx.Client(base_url=str(serve.api.base_url), headers={"Authorization": f"Bearer {key}"})
        _sipp("siprec_call", serve, tmp_path, "-set", "sender", sender)  # type: ignore[arg-type]
        bye_done = time.monotonic()

        def completed() -> dict[str, object] | None:
            items = acme.get("/api/v1/calls").json()["items"]
            done = [c for c in items if c["recording"] and c["recording"]["state"] == "completed"]
            return done[0] if done else None

        card = serve.wait_for("a completed recording", completed, timeout=SECONDS_TO_COMPLETE)
        took = time.monotonic() - bye_done
        assert took < SECONDS_TO_COMPLETE
        card = acme.get(f"/api/v1/calls/{card['id']}").json()
        assert card["domain"] == "acme" and card["interaction_id"] == "sipp-interaction-1"
        assert card["end_reason"] == "bye" and card["source"] == "siprec"
        assert {p["label"]: (p["role"], p["number"]) for p in card["parties"]} == {
            "A": ("caller", "+15551230001"), "B": ("callee", "+15559870002"),
        }  # fmt: skip
        assert all(s["quality"]["packets"] > 0 and s["quality"]["lost"] == 0 for s in card["streams"]), card
        rec = card["recording"]
        assert rec["format"] == "mp3" and rec["bytes"] > 0 and rec["duration_s"] > 7
        audio_resp = acme.get(rec["audio_url"])
        assert audio_resp.status_code == 200 and audio_resp.headers["content-type"] == "audio/mpeg"
        assert len(audio_resp.content) == rec["bytes"]
        # the same call is not visible to the default domain's admin listing under another domain
        assert serve.api.get("/api/v1/calls").json()["items"][0]["id"] == card["id"]
        assert serve.stop() == 0, serve.log()[-3000:]
    mp3 = tmp_path / "call.mp3"
    mp3.write_bytes(audio_resp.content)
    assert probe(mp3)["streams"][0]["channels"] == 2
    audio = decode(mp3)
    ref_ssrc, ref = _sipp_reference(pcap_dir / "g711a.pcap")
    left, right = audio[:, 0].astype(np.float64), audio[:, 1].astype(np.float64)
    # MP3 at 16 kbit/s is lossy: the shape must still match clearly, each in its own channel
    _, peak = xcorr(left, ref.astype(np.float64), 2 * RATE)
    assert peak > 0.8, f"left vs g711a.pcap: {peak:.3f}"
    _, peak = xcorr(right, noise.astype(np.float64), 2 * RATE)
    assert peak > 0.5, f"right vs the noise sent: {peak:.3f}"
    _, leak = xcorr(left, noise.astype(np.float64), 2 * RATE)
    assert abs(leak) < 0.1, f"the noise leaks into the left channel: {leak:.3f}"
    print(f"BYE → completed in {took:.2f} s")
