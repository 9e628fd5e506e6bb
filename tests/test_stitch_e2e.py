"""End to end: an interaction recorded through the real recorder (``callrec serve``, sipp as the SIPREC
client) and stitched into one file fetched through the API, checked by cross-correlation on ffmpeg's
decoding.

The interaction: the customer talks with operator 1; is transferred to operator 2; then operator 2 brings
in operator 3 (a three-party conference). Every party sends its own noise, a few seconds apart between
calls. The stitched file must hold the customer alone on the left throughout and the operators on the
right in order, with the waits between calls cut to the pause, and its chapters must match the calls.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from callrec.media.stitch import PAUSE_S
from tests.recorder.test_record_sipp import SENDER, _sipp
from tests.support.audio import FFMPEG, decode, need, xcorr
from tests.support.serve_proc import ServeProcess

pytestmark = pytest.mark.slow  # real serve process, sipp

RATE = 8000
SEND_S = 3
GAP_S = 5.0  # the wait between calls, cut to PAUSE_S in the stitched file
MAX_LAG = RATE // 2
INTERACTION = "e2e-interaction-1"
CUSTOMER = ("+15551230001", "Carol Customer")
OP1, OP2, OP3 = ("+15559870101", "Olga One"), ("+15559870102", "Oleg Two"), ("+15559870103", "Oscar Three")
TIMEOUT_S = 90


def _noise(work: Path, name: str, seed: int) -> tuple[Path, np.ndarray]:
    """White noise as µ-law bytes (what one party sends) and ffmpeg's decoding of those bytes."""
    ffmpeg = need(FFMPEG, "ffmpeg")
    path = work / f"{name}.ulaw"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", f"anoisesrc=color=white:seed={seed}:amplitude=0.3:d={SEND_S}",
         "-ar", str(RATE), "-ac", "1", "-f", "mulaw", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    pcm = subprocess.run(
        [ffmpeg, "-v", "error", "-f", "mulaw", "-ar", str(RATE), "-ac", "1", "-i", str(path), "-f", "s16le", "-"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    return path, np.frombuffer(pcm, np.int16).astype(np.float64)


def _call(serve: ServeProcess, work: Path, scenario: str, people: list[tuple[tuple[str, str], Path]]) -> None:
    """One SIPREC call of the interaction; participant i is ``people[i]`` and sends its noise file."""
    work.mkdir()
    args: list[str] = ["-set", "interaction", INTERACTION]
    for i, ((number, name), payload) in enumerate(people, start=1):
        sender = f"{sys.executable} {SENDER} --payload {payload} --ssrc {0x5EED0000 + i:#x}"
        args += ["-set", f"num{i}", number, "-set", f"name{i}", name, "-set", f"send{i}", sender]
    _sipp(scenario, serve, work, *args)  # type: ignore[arg-type]


def _who(person: tuple[str, str]) -> str:
    return f"{person[1]} ({person[0]})"


def test_an_interaction_recorded_by_the_real_recorder_stitches_with_the_customer_left(tmp_path: Path) -> None:
    noise = {
        name: _noise(tmp_path, name, seed)
        for name, seed in (
            ("cust1", 11),
            ("cust2", 12),
            ("cust3", 13),
            ("op1", 21),
            ("op2", 22),
            ("op2b", 23),
            ("op3", 24),
        )
    }
    with ServeProcess(tmp_path / "data") as serve:
        # WAV keeps the check exact; the tapes are kept, so the conference's voices are mixed apart again
        made = serve.api.post(
            "/api/v1/domains", json={"name": "acme", "settings": {"format": "wav", "keep_tape_days": 1}}
        )
        assert made.status_code == 201, made.text
        key = serve.api.post("/api/v1/domains/acme/keys", json={}).json()["key"]
        acme = httpx.Client(base_url=str(serve.api.base_url), headers={"Authorization": f"Bearer {key}"},
                            timeout=30)  # fmt: skip

        _call(serve, tmp_path / "call1", "siprec_two_party", [(CUSTOMER, noise["cust1"][0]), (OP1, noise["op1"][0])])
        time.sleep(GAP_S)
        _call(serve, tmp_path / "call2", "siprec_two_party", [(CUSTOMER, noise["cust2"][0]), (OP2, noise["op2"][0])])
        time.sleep(GAP_S)
        _call(serve, tmp_path / "call3", "siprec_conference",
              [(CUSTOMER, noise["cust3"][0]), (OP2, noise["op2b"][0]), (OP3, noise["op3"][0])])  # fmt: skip

        def all_completed() -> list[dict[str, Any]] | None:
            answer = acme.get("/api/v1/calls", params={"interaction": INTERACTION})
            assert answer.status_code == 200, f"{answer.status_code} {answer.text[:300]}\n{serve.log()[-3000:]}"
            items = answer.json()["items"]
            done = [c for c in items if c["recording"] and c["recording"]["state"] == "completed"]
            return sorted(done, key=lambda c: c["started_at"]) if len(done) == 3 else None

        cards = serve.wait_for("three completed recordings", all_completed, timeout=TIMEOUT_S)
        url = f"/api/v1/interactions/{INTERACTION}/stitched"
        first = acme.get(url)
        assert first.status_code in (200, 202), first.text

        def stitched() -> dict[str, Any] | None:
            answer = acme.get(url)
            assert answer.status_code in (200, 202), answer.text
            body: dict[str, Any] = answer.json()
            assert body["state"] != "failed", body
            return body if answer.status_code == 200 else None

        body = serve.wait_for("the stitched recording", stitched, timeout=TIMEOUT_S)
        audio_resp = acme.get(url + "/audio")
        assert audio_resp.status_code == 200 and audio_resp.headers["content-type"] == "audio/wav"
        assert serve.api.get(url, params={"domain": "acme"}).json()["chapters"] == body["chapters"]
        assert serve.stop() == 0, serve.log()[-3000:]

    # the chapters are the calls, in order, named by their employees
    assert body["state"] == "completed" and body["format"] == "wav"
    assert body["calls"] == [c["id"] for c in cards]
    assert body["customer"]["number"] == CUSTOMER[0] and body["customer"]["name"] == CUSTOMER[1]
    chapters = body["chapters"]
    assert [c["call_id"] for c in chapters] == [c["id"] for c in cards]
    assert [c["who"] for c in chapters] == [[_who(OP1)], [_who(OP2)], [_who(OP2), _who(OP3)]]
    for chapter, card in zip(chapters, cards, strict=True):
        assert abs((chapter["to_s"] - chapter["from_s"]) - card["recording"]["duration_s"]) < 0.1, (chapter, card)
    for before, after in zip(chapters, chapters[1:], strict=False):
        assert abs(after["from_s"] - before["to_s"] - PAUSE_S) < 0.05, chapters
    # the waits were cut: the file is the calls and two pauses, far shorter than the time it all took
    calls_s = sum(c["recording"]["duration_s"] for c in cards)
    assert abs(body["duration_s"] - (calls_s + 2 * PAUSE_S)) < 0.2, (body["duration_s"], calls_s)
    wall = _epoch(cards[-1]["ended_at"]) - _epoch(cards[0]["started_at"])
    assert wall - body["duration_s"] > 2 * (GAP_S - PAUSE_S) - 1.0, (wall, body["duration_s"])

    wav = tmp_path / "stitched.wav"
    wav.write_bytes(audio_resp.content)
    audio = decode(wav).astype(np.float64)
    assert abs(len(audio) / RATE - body["duration_s"]) < 0.05
    expected = [("cust1", ["op1"]), ("cust2", ["op2"]), ("cust3", ["op2b", "op3"])]
    for chapter, (customer, operators) in zip(chapters, expected, strict=True):
        seg = audio[int(chapter["from_s"] * RATE) : int(chapter["to_s"] * RATE)]
        left, right = seg[:, 0], seg[:, 1]
        # find each voice where it belongs, then measure the other channel at that same lag: a maximum
        # over every lag of two unrelated noises can pass a small threshold by chance
        lag, peak = xcorr(left, noise[customer][1], MAX_LAG)
        assert peak > 0.9, f"{customer} on the left of {chapter}: {peak:.3f}"
        leak = _corr_at(right, noise[customer][1], lag)
        assert abs(leak) < 0.05, f"{customer} leaks right in {chapter}: {leak:.3f}"
        for op in operators:
            # two operators share the right channel of the conference: each is half its power
            lag, peak = xcorr(right, noise[op][1], MAX_LAG)
            assert peak > (0.9 if len(operators) == 1 else 0.5), f"{op} on the right of {chapter}: {peak:.3f}"
            leak = _corr_at(left, noise[op][1], lag)
            assert abs(leak) < 0.05, f"{op} leaks left in {chapter}: {leak:.3f}"
    print(f"stitched {body['duration_s']:.2f} s from calls spanning {wall:.2f} s; chapters {chapters}")


def _corr_at(x: np.ndarray, ref: np.ndarray, lag: int) -> float:
    """Normalised correlation of ``x`` with ``ref`` delayed by ``lag`` samples, over ``ref``'s length."""
    if lag >= 0:
        a, b = x[lag:], ref
    else:
        a, b = x, ref[-lag:]
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    norm = float(np.sqrt((a * a).sum() * (b * b).sum())) or 1.0
    return float((a * b).sum() / norm)


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()
