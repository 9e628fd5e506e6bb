"""A real SIPREC client: sipp runs the scenarios in tests/sipp/ against ``callrec record`` on 127.0.0.1.

The recorded call's two streams are real RTP: sipp plays its own ``g711a.pcap`` to the first answered
port, ``tests/support/rtp_send.py`` (started by the scenario) sends a µ-law noise file made by ffmpeg to the
second. The tape must mix into a stereo file holding each where the metadata says: sipp's audio on the
left (participant 1 sends label 1), the noise on the right, each at its arrival time within 20 ms, with
no crosstalk. Oracles: ffmpeg's decodings of what was sent, and the tape's own packets read by dpkt.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import numpy as np
import pytest

from tests.support.audio import FFMPEG, decode, mix_json, need, xcorr
from tests.support.recorder_proc import RecorderProcess, free_udp_block, read_call
from tests.test_sipp_capture import _sipp_pcap_dir, _sipp_reference

pytestmark = pytest.mark.slow  # real recorder process driven by sipp

RATE = 8000
MAX_LAG = int(0.020 * RATE)
SCENARIOS = Path(__file__).parents[1] / "sipp"
SENDER = Path(__file__).parents[1] / "support" / "rtp_send.py"
TIMEOUT_S = 60
NOISE_S = 8
CROSSTALK = 0.05  # normalised correlation of a channel with the other party's signal


def _sipp(scenario: str, recorder: RecorderProcess, work: Path, *extra: str, transport: str = "u1") -> str:
    """Run one scenario as the SRC; returns sipp's message trace. Fails with sipp's errors when it fails."""
    sipp = need(shutil.which("sipp"), "sipp")
    base = free_udp_block(8, 20000, 60000)
    proc = subprocess.run(
        [sipp, "-sf", str(SCENARIOS / f"{scenario}.xml"), "-t", transport, "-i", "127.0.0.1", "-p", str(base),
         "-mi", "127.0.0.1", "-mp", str(base + 2), "-m", "1", "-nostdin", "-trace_err", "-trace_msg",
         "-timeout", f"{TIMEOUT_S}s", *extra, f"127.0.0.1:{recorder.sip_port}"],
        cwd=work, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S + 10,
    )  # fmt: skip
    errors = "".join(p.read_text(errors="replace") for p in work.glob(f"{scenario}_*_errors.log"))
    messages = "".join(p.read_text(errors="replace") for p in work.glob(f"{scenario}_*_messages.log"))
    assert proc.returncode == 0, (
        f"sipp {scenario} exited {proc.returncode}:\n{errors[-3000:]}\n{proc.stdout[-1500:]}\n"
        f"recorder log:\n{recorder.log()[-3000:]}"
    )
    return messages


def _wait_file(folder: Path, pattern: str, timeout: float = TIMEOUT_S) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.rglob(pattern)) if folder.exists() else []
        # the mixer writes in a hidden staging folder and moves the finished file out of it
        found = [p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"nothing like {pattern} appeared in {folder} within {timeout} s")


def _first_arrivals(tape: Path) -> dict[int, float]:
    """Per destination port, the arrival time of the first packet on the tape."""
    out: dict[int, float] = {}
    with (tape / "media.pcap").open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_RAW or reader.datalink() == 101
        for ts, frame in reader:
            udp = dpkt.ip.IP(frame).data
            out.setdefault(udp.dport, float(ts))
    return out


def _noise(work: Path) -> tuple[Path, np.ndarray]:
    """Pink noise as µ-law bytes (what stream 2 sends) and ffmpeg's decoding of those bytes."""
    ffmpeg = need(FFMPEG, "ffmpeg")
    path = work / "noise.ulaw"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", f"anoisesrc=color=pink:seed=7:amplitude=0.3:d={NOISE_S}",
         "-ar", str(RATE), "-ac", "1", "-f", "mulaw", str(path)],
        check=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    pcm = subprocess.run(
        [ffmpeg, "-v", "error", "-f", "mulaw", "-ar", str(RATE), "-ac", "1", "-i", str(path), "-f", "s16le", "-"],
        check=True, capture_output=True, timeout=TIMEOUT_S,
    ).stdout  # fmt: skip
    return path, np.frombuffer(pcm, np.int16)


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_siprec_call_with_hold_and_resume_mixes_to_the_right_channels(tmp_path: Path, transport: str) -> None:
    pcap_dir = _sipp_pcap_dir()
    shutil.copy(pcap_dir / "g711a.pcap", tmp_path / "g711a.pcap")
    noise_path, noise = _noise(tmp_path)
    sent_log = tmp_path / "sent.log"
    sender = f"{sys.executable} {SENDER} --payload {noise_path} --log {sent_log}"
    with RecorderProcess(tmp_path / "data", "--mix") as recorder:
        trace = _sipp("siprec_call", recorder, tmp_path, "-set", "sender", sender, transport=transport)
        # --mix: the tape closed by the BYE is mixed by the recorder itself
        mixed = _wait_file(tmp_path / "data" / "recordings", "*.mp3")
        assert recorder.stop() == 0, recorder.log()
    stereo = decode(mixed)
    assert stereo.shape[0] > 7 * RATE and np.abs(stereo).max(axis=0).min() > 1000, "both channels hold audio"
    # the dialog as sipp saw it: answered, two re-INVITEs (hold, resume) answered, BYE answered
    assert trace.count("SIP/2.0 200 OK") == 4, trace[-3000:]

    tapes = recorder.tapes()
    assert len(tapes) == 1, tapes
    info = read_call(tapes[0])
    assert info["source"] == "siprec" and info["closed_cleanly"] and not info["interrupted"], info
    assert info["end_reason"] == "bye"
    assert info["domain"] == "acme" and info["interaction_id"] == "sipp-interaction-1", info
    parties = {p["id"]: (p["role"], p["number"], p["name"]) for p in info["parties"]}
    assert parties == {
        "A": ("caller", "+15551230001", "Alice Caller"),
        "B": ("callee", "+15559870002", "Bob Callee"),
    }, parties
    streams = {s["label"]: s for s in info["streams"]}
    assert {k: v["party"] for k, v in streams.items()} == {"1": "A", "2": "B"}
    assert streams["1"]["rtpmap"]["8"]["encoding"] == "PCMA" and streams["2"]["rtpmap"]["0"]["encoding"] == "PCMU"

    # the tape mixes; every packet sent is on it
    out = tmp_path / "call.wav"
    [result] = mix_json(str(tapes[0]), "-o", str(out))
    ref_ssrc, ref = _sipp_reference(pcap_dir / "g711a.pcap")
    by_party = {s["party"]: s for s in result["streams"]}
    sent_noise = int(sent_log.read_text().split()[1])
    assert by_party["A"]["ssrc"] == ref_ssrc and by_party["A"]["codec"] == "PCMA/8000", result
    with (pcap_dir / "g711a.pcap").open("rb") as f:
        played = sum(1 for _ in dpkt.pcap.Reader(f))
    assert by_party["A"]["packets"] == played, result
    assert by_party["B"]["codec"] == "PCMU/8000" and by_party["B"]["packets"] == sent_noise, result
    assert by_party["A"]["lost"] == by_party["B"]["lost"] == 0, result

    # each party in its channel at its arrival time, and not in the other one
    audio = decode(out)
    arrivals = _first_arrivals(tapes[0])
    t0 = min(arrivals.values())
    lag_a = round((arrivals[streams["1"]["local_port"]] - t0) * RATE)
    lag_b = round((arrivals[streams["2"]["local_port"]] - t0) * RATE)
    left, right = audio[:, 0], audio[:, 1]
    lag, peak = xcorr(left[lag_a:], ref, MAX_LAG)
    assert abs(lag) <= MAX_LAG and peak > 0.99, f"left vs g711a.pcap: lag {lag}, peak {peak:.3f}"
    lag, peak = xcorr(right[lag_b:], noise, MAX_LAG)
    assert abs(lag) <= MAX_LAG and peak > 0.99, f"right vs the noise sent: lag {lag}, peak {peak:.3f}"
    _, leak = xcorr(left[lag_b:], noise, MAX_LAG)
    assert abs(leak) < CROSSTALK, f"the noise leaks into the left channel: {leak:.3f}"
    _, leak = xcorr(right[lag_a:], ref, MAX_LAG)
    assert abs(leak) < CROSSTALK, f"sipp's audio leaks into the right channel: {leak:.3f}"


def test_options_keepalive_is_answered(tmp_path: Path) -> None:
    with RecorderProcess(tmp_path / "data") as recorder:
        trace = _sipp("options", recorder, tmp_path)
        assert recorder.stop() == 0
    assert "SIP/2.0 200 OK" in trace
    assert recorder.tapes() == [], "an OPTIONS ping must not open a tape"


def test_cancel_before_answer_leaves_no_open_session(tmp_path: Path) -> None:
    with RecorderProcess(tmp_path / "data") as recorder:
        trace = _sipp("cancel", recorder, tmp_path)
        assert recorder.stop() == 0
    tapes = recorder.tapes()
    if "487 Request Terminated" in trace:
        # cancelled while proceeding: nothing was recorded, so nothing is kept
        assert tapes == [], [read_call(t) for t in tapes]
    else:
        # answered before the CANCEL arrived: an ordinary call ended by BYE
        assert len(tapes) == 1 and read_call(tapes[0])["end_reason"] == "bye"
    assert not list((tmp_path / "data" / "tapes" / ".open").iterdir()), "a tape is still marked open"


def test_retransmitted_invite_makes_one_session(tmp_path: Path) -> None:
    with RecorderProcess(tmp_path / "data") as recorder:
        trace = _sipp("invite_retransmitted", recorder, tmp_path)
        assert recorder.stop() == 0
    assert trace.count("INVITE sip:") == 2, "sipp should have sent the INVITE twice"
    tapes = recorder.tapes()
    assert len(tapes) == 1, f"one INVITE sent twice made {len(tapes)} tapes"
    info = read_call(tapes[0])
    assert info["closed_cleanly"] and info["end_reason"] == "bye", info
    assert len(info["streams"]) == 2
