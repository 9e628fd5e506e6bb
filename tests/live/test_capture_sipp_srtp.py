"""``callrec capture`` of an SRTP call between two sipp phones on a switch (``pbx.Phones``: namespaces on a bridge).

The caller offers RTP/SAVP with an ``a=crypto`` line (AES_CM_128_HMAC_SHA1_80) holding its key, the callee
answers RTP/SAVP with its own (tests/sipp/srtp_uac.xml, srtp_uas.xml); each plays, with ``play_pcap_audio``,
SRTP the test protected with the key it announced (tests/support/srtp_pcap.py: speech-like audio encoded by
ffmpeg, protected by libsrtp through pylibsrtp). The tape holds the packets as they crossed the wire, still
encrypted; ``callrec mix`` of the tape decrypts each direction with the key its sender's SDP carried: the
caller's audio on the left, the callee's on the right (xcorr >= 0.99 within 20 ms of the arrival). When the
caller's SDP announces one key and its packets were protected with another, the mix gives the README's
reason ("SRTP authentication failed for every packet: wrong key") and the left channel is silence, not
noise. Root and netns: skipped with the reason elsewhere, never under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

from tests.live.pbx import MEDIA_PORT, SIPP_TIMEOUT_S, Phones, listening, phones_fixture  # noqa: F401 - the fixture
from tests.live.test_capture_calls import Capture, info_of, rtp_arrivals, wait_closed
from tests.support import srtp_pcap, synth
from tests.support.audio import FFMPEG, decode, need, xcorr

pytestmark = pytest.mark.slow

RATE = 8000
MAX_LAG = int(0.020 * RATE)
SECONDS = 4.0
SILENCE = 100  # max abs sample value of a silent channel
MIX_TIMEOUT_S = 120
SCENARIOS = Path(__file__).parents[1] / "sipp"
WRONG_KEY = "SRTP authentication failed for every packet: wrong key"


def _call(phones: Phones, work: Path, announced: dict[str, bytes], used: dict[str, bytes]) -> dict[str, Any]:
    """One SRTP call from a (party A) to b (party B), each announcing ``announced``'s key and protecting its
    packets with ``used``'s; returns what each sent (``srtp_pcap.SrtpAudio``) by party."""
    sipp = need(shutil.which("sipp"), "sipp")
    need(FFMPEG, "ffmpeg")
    work.mkdir(parents=True, exist_ok=True)
    sent = {
        "A": srtp_pcap.write(work / "srtp_caller.pcap", synth.voice(SECONDS, 31), "PCMU", used["A"], 0xA1CE),
        "B": srtp_pcap.write(work / "srtp_callee.pcap", synth.voice(SECONDS, 32), "PCMU", used["B"], 0xB0B),
    }
    common = ["-t", "u1", "-m", "1", "-nostdin", "-trace_err", "-timeout", f"{SIPP_TIMEOUT_S}s",
              "-mp", str(MEDIA_PORT), "-p", "5060"]  # fmt: skip
    callee = phones.popen("b", [sipp, "-sf", str(SCENARIOS / "srtp_uas.xml"), "-i", phones.ip["b"],
                                "-mi", phones.ip["b"], *common, "-set", "key", srtp_pcap.key_b64(announced["B"])],
                          work / "uas.log")  # fmt: skip
    listening(phones.ns["b"], "u1")
    caller = phones.popen("a", [sipp, "-sf", str(SCENARIOS / "srtp_uac.xml"), "-i", phones.ip["a"],
                                "-mi", phones.ip["a"], *common, "-set", "key", srtp_pcap.key_b64(announced["A"]),
                                f"{phones.ip['b']}:5060"], work / "uac.log")  # fmt: skip
    for proc, name in ((caller, "srtp_uac"), (callee, "srtp_uas")):
        code = proc.wait(timeout=SIPP_TIMEOUT_S + 10)
        errors = "".join(p.read_text(errors="replace") for p in work.glob(f"{name}_*_errors.log"))
        assert code == 0, f"sipp {name} exited {code}: {errors[-2000:]}"
    return sent


def _record(phones: Phones, work: Path, announced: dict[str, bytes], used: dict[str, bytes]) -> tuple[Path, Any]:
    """The call captured live from the bridge: its one closed tape and what each party sent."""
    data = work / "data"
    capture = Capture(data, "--interface", phones.bridge, "--domain-from", "ruri")
    try:
        sent = _call(phones, work / "call", announced, used)
        [folder] = wait_closed(data)
    finally:
        assert capture.stop() == 0, capture.log()
    log = capture.log()
    for key in (*announced.values(), *used.values()):
        assert srtp_pcap.key_b64(key) not in log and key.hex() not in log, "a key is in the capture's log"
    info = info_of(folder)
    assert info["source"] == "capture" and info["end_reason"] == "bye" and info["closed_cleanly"], info
    return folder, sent


def _mix(folder: Path, out: Path, keys: list[bytes]) -> tuple[dict[str, Any], str]:
    """``callrec mix TAPE --data DIR --json`` (DIR: the capture's data folder, next to ``out``): its one result
    and its stderr (no key shown in either)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CALLREC_SECRET_KEY", "CALLREC_DATA")}
    proc = subprocess.run(
        [sys.executable, "-m", "callrec", "mix", str(folder), "--data", str(out.parent / "data"), "-o", str(out),
         "--json"],
        capture_output=True, text=True, timeout=MIX_TIMEOUT_S, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for key in keys:
        assert srtp_pcap.key_b64(key) not in proc.stdout + proc.stderr, "a key is shown by callrec mix"
    [result] = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return result, proc.stderr


def _wire(folder: Path) -> dict[str, list[bytes]]:
    """The RTP/SRTP payloads on the tape, per destination address, in arrival order."""
    found: dict[str, list[bytes]] = {}
    with (folder / "media.pcap").open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            packet = dpkt.ip.IP(frame)
            udp = packet.data
            if isinstance(udp, dpkt.udp.UDP) and udp.dport == MEDIA_PORT:
                found.setdefault(".".join(str(b) for b in packet.dst), []).append(bytes(udp.data))
    return found


def test_an_srtp_call_captured_live_decrypts_to_each_side(phones: Phones, tmp_path: Path) -> None:
    keys = {"A": os.urandom(30), "B": os.urandom(30)}
    folder, sent = _record(phones, tmp_path, keys, keys)
    # on the tape as on the wire: still encrypted, byte for byte what each phone sent
    wire = _wire(folder)
    assert wire[phones.ip["b"]] == sent["A"].packets and wire[phones.ip["a"]] == sent["B"].packets
    out = tmp_path / "call.wav"
    result, stderr = _mix(folder, out, list(keys.values()))
    assert result["warnings"] == [] and "warning" not in stderr, (result, stderr)
    by_party = {s["party"]: s for s in result["streams"]}
    assert set(by_party) == {"A", "B"}, result
    for party in "AB":
        stream = by_party[party]
        assert stream["packets"] == len(sent[party].packets) and stream["lost"] == 0, stream
        assert stream["srtp_auth_failures"] == stream["srtp_replayed"] == stream["srtp_undecryptable"] == 0
    audio = decode(out)
    arrivals = rtp_arrivals(folder)
    t0 = min(arrivals.values())
    lags = {"A": round((arrivals[phones.ip["b"], MEDIA_PORT] - t0) * RATE),  # what the caller sends goes to b
            "B": round((arrivals[phones.ip["a"], MEDIA_PORT] - t0) * RATE)}  # fmt: skip
    for channel, party in ((0, "A"), (1, "B")):
        lag, peak = xcorr(audio[lags[party] :, channel], sent[party].reference, MAX_LAG)
        assert abs(lag) <= MAX_LAG and peak >= 0.99, f"channel {channel} vs what {party} sent: lag {lag}, {peak:.4f}"


def test_a_wrong_key_on_the_wire_gives_the_reason_and_a_silent_channel(phones: Phones, tmp_path: Path) -> None:
    announced = {"A": os.urandom(30), "B": os.urandom(30)}
    used = {"A": os.urandom(30), "B": announced["B"]}
    folder, sent = _record(phones, tmp_path, announced, used)
    index = next(i for i, s in enumerate(info_of(folder)["streams"]) if s["party"] == "A")
    out = tmp_path / "call.wav"
    result, stderr = _mix(folder, out, [*announced.values(), used["A"]])
    reason = f"stream {index} (from A): {WRONG_KEY}; its audio is silence"
    assert result["warnings"] == [reason], result["warnings"]
    assert reason in stderr, stderr
    by_party = {s["party"]: s for s in result["streams"]}
    assert by_party["A"]["srtp_auth_failures"] == len(sent["A"].packets), by_party["A"]
    assert by_party["B"]["srtp_auth_failures"] == 0 and by_party["B"]["packets"] == len(sent["B"].packets)
    audio = decode(out)
    left_peak = int(np.abs(audio[:, 0]).max(initial=0))
    assert left_peak < SILENCE, f"the channel of the wrong key is not silent: peak {left_peak}"
    # no packet of the caller's is placed, so the output starts with the callee's first packet
    lag, peak = xcorr(audio[:, 1], sent["B"].reference, MAX_LAG)
    assert abs(lag) <= MAX_LAG and peak >= 0.99, f"right vs what the callee sent: lag {lag}, peak {peak:.4f}"
