"""A real SIPREC client offering SRTP: sipp runs tests/sipp/siprec_srtp.xml against ``callrec record``.

Both streams are offered as RTP/SAVP with an ``a=crypto`` line (AES_CM_128_HMAC_SHA1_80) holding a key the test
chose; their media is SRTP the test built (tests/support/srtp_pcap.py: speech-like audio encoded by ffmpeg,
protected by libsrtp through pylibsrtp): stream 1 played by sipp's ``play_pcap_audio``, stream 2 replayed
from a second pcap by the scenario's sender. The recorder answers each line with a key of its own, keeps the
packets as received (still encrypted) and the SRC's keys sealed; ``callrec mix TAPE --data DIR`` decrypts
them: each channel holds what was sent (xcorr >= 0.99 within 20 ms of its arrival). When the SDP announces
one key and the packets were protected with another, the mix says why the channel is silent — the README's
"SRTP authentication failed for every packet: wrong key" — and the channel is silence, not noise.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import numpy as np
import pytest

from tests.recorder.test_record_sipp import _first_arrivals, _sipp
from tests.support import srtp_pcap, synth
from tests.support.audio import FFMPEG, decode, need, xcorr
from tests.support.recorder_proc import RecorderProcess, read_call

pytestmark = pytest.mark.slow  # a real recorder process driven by sipp

RATE = 8000
MAX_LAG = int(0.020 * RATE)
SECONDS = 4.0
SILENCE = 100  # max abs sample value of a silent channel
MIX_TIMEOUT_S = 120
SENDER = Path(srtp_pcap.__file__)
WRONG_KEY = "SRTP authentication failed for every packet: wrong key"


@dataclass
class Recorded:
    tape: Path
    data: Path
    trace: str
    sent: dict[str, srtp_pcap.SrtpAudio]  # party -> what it sent
    announced: dict[str, bytes]  # party -> the key its a=crypto line carried


def _record(work: Path, announced: dict[str, bytes], used: dict[str, bytes]) -> Recorded:
    """One SIPREC call recorded by ``callrec record``: party A's stream (label 1) and B's (label 2) announced
    with ``announced``'s keys and protected with ``used``'s."""
    need(FFMPEG, "ffmpeg")
    need(shutil.which("sipp"), "sipp")
    if os.geteuid() != 0:
        # play_pcap_audio sends through a raw socket
        reason = "sipp's play_pcap_audio needs root (a raw socket)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI must run it")
        pytest.skip(reason)
    sent = {
        "A": srtp_pcap.write(work / "srtp_a.pcap", synth.voice(SECONDS, 21), "PCMA", used["A"], 0x5EC0A),
        "B": srtp_pcap.write(work / "srtp_b.pcap", synth.voice(SECONDS, 22), "PCMU", used["B"], 0x5EC0B),
    }
    sender = f"{sys.executable} {SENDER} {work / 'srtp_b.pcap'} --log {work / 'sent-b.log'}"
    data = work / "data"
    with RecorderProcess(data) as recorder:
        trace = _sipp("siprec_srtp", recorder, work, "-set", "key1", srtp_pcap.key_b64(announced["A"]),
                      "-set", "key2", srtp_pcap.key_b64(announced["B"]), "-set", "sender", sender)  # fmt: skip
        assert recorder.stop() == 0, recorder.log()
        log = recorder.log()
    tapes = recorder.tapes()
    assert len(tapes) == 1, tapes
    for key in (*announced.values(), *used.values()):
        assert srtp_pcap.key_b64(key) not in log and key.hex() not in log, "a key is in the recorder's log"
    return Recorded(tapes[0], data, trace, sent, announced)


def _mix(rec: Recorded, out: Path) -> tuple[dict[str, Any], str]:
    """``callrec mix TAPE --data DIR --json``: its one result and its stderr (no key shown in either)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CALLREC_SECRET_KEY", "CALLREC_DATA")}
    proc = subprocess.run(
        [sys.executable, "-m", "callrec", "mix", str(rec.tape), "--data", str(rec.data), "-o", str(out), "--json"],
        capture_output=True, text=True, timeout=MIX_TIMEOUT_S, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for key in rec.announced.values():
        assert srtp_pcap.key_b64(key) not in proc.stdout + proc.stderr, "a key is shown by callrec mix"
    [result] = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return result, proc.stderr


def _tape_payloads(tape: Path) -> dict[int, list[bytes]]:
    """The UDP payloads on the tape, per destination port, in arrival order."""
    found: dict[int, list[bytes]] = {}
    with (tape / "media.pcap").open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            udp = dpkt.ip.IP(frame).data
            found.setdefault(udp.dport, []).append(bytes(udp.data))
    return found


def _lags(rec: Recorded, streams: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each party's expected offset in the output (samples): its first arrival after the earliest one."""
    arrivals = _first_arrivals(rec.tape)
    t0 = min(arrivals.values())
    return {party: round((arrivals[streams[label]["local_port"]] - t0) * RATE)
            for party, label in (("A", "1"), ("B", "2"))}  # fmt: skip


def _keys(n: int = 2) -> list[bytes]:
    return [secrets.token_bytes(30) for _ in range(n)]


def test_srtp_siprec_call_is_recorded_encrypted_and_mixes_to_what_was_sent(tmp_path: Path) -> None:
    key_a, key_b = _keys()
    keys = {"A": key_a, "B": key_b}
    rec = _record(tmp_path, keys, keys)

    # the answer: RTP/SAVP with a key of the SRS's own on each line (the scenario checked the shape)
    answer = rec.trace[rec.trace.index("SIP/2.0 200 OK") :].split("CSeq: 1 ACK")[0]
    answered = re.findall(r"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:([A-Za-z0-9+/=]+)", answer)
    assert len(answered) == 2, answer[:2000]
    assert not {base64.b64decode(k) for k in answered} & {key_a, key_b}, "the SRS echoed the SRC's key"

    # the tape: packets as received, byte for byte still encrypted; the keys sealed, never in clear
    info = read_call(rec.tape)
    assert info["source"] == "siprec" and info["closed_cleanly"] and info["end_reason"] == "bye", info
    streams = {s["label"]: s for s in info["streams"]}
    assert {k: v["party"] for k, v in streams.items()} == {"1": "A", "2": "B"}, info["streams"]
    assert [(e["stream"], e["suite"]) for e in info["srtp"]] == [(0, srtp_pcap.SUITE), (1, srtp_pcap.SUITE)]
    text = (rec.tape / "call.json").read_text()
    for key in keys.values():
        assert srtp_pcap.key_b64(key) not in text and key.hex() not in text, "a key is in call.json in clear"
    assert (rec.data / "secret.key").is_file()
    on_tape = _tape_payloads(rec.tape)
    assert on_tape[streams["1"]["local_port"]] == rec.sent["A"].packets
    assert on_tape[streams["2"]["local_port"]] == rec.sent["B"].packets

    # the mix decrypts: nothing fails, each channel holds what its party sent
    out = tmp_path / "call.wav"
    result, stderr = _mix(rec, out)
    assert result["warnings"] == [] and "warning" not in stderr, (result, stderr)
    by_party = {s["party"]: s for s in result["streams"]}
    assert by_party["A"]["codec"] == "PCMA/8000" and by_party["B"]["codec"] == "PCMU/8000", result
    for party in "AB":
        stream = by_party[party]
        assert stream["packets"] == len(rec.sent[party].packets) and stream["lost"] == 0, stream
        assert stream["srtp_auth_failures"] == stream["srtp_replayed"] == stream["srtp_undecryptable"] == 0
    audio = decode(out)
    lags = _lags(rec, streams)
    for channel, party in ((0, "A"), (1, "B")):
        lag, peak = xcorr(audio[lags[party] :, channel], rec.sent[party].reference, MAX_LAG)
        assert abs(lag) <= MAX_LAG and peak >= 0.99, f"channel {channel} vs what {party} sent: lag {lag}, {peak:.4f}"


def test_a_wrong_key_gives_the_reason_and_a_silent_channel(tmp_path: Path) -> None:
    announced_a, used_a, key_b = _keys(3)
    rec = _record(tmp_path, {"A": announced_a, "B": key_b}, {"A": used_a, "B": key_b})
    info = read_call(rec.tape)
    index = next(i for i, s in enumerate(info["streams"]) if s["label"] == "1")

    out = tmp_path / "call.wav"
    result, stderr = _mix(rec, out)
    reason = f"stream {index} (from A): {WRONG_KEY}; its audio is silence"
    assert result["warnings"] == [reason], result["warnings"]
    assert reason in stderr, stderr
    by_party = {s["party"]: s for s in result["streams"]}
    assert by_party["A"]["srtp_auth_failures"] == len(rec.sent["A"].packets), by_party["A"]
    assert by_party["B"]["srtp_auth_failures"] == 0 and by_party["B"]["packets"] == len(rec.sent["B"].packets)
    audio = decode(out)
    left_peak = int(np.abs(audio[:, 0]).max(initial=0))
    assert left_peak < SILENCE, f"the channel of the wrong key is not silent: peak {left_peak}"
    # no packet of A's is placed, so the output starts with B's first packet
    lag, peak = xcorr(audio[:, 1], rec.sent["B"].reference, MAX_LAG)
    assert abs(lag) <= MAX_LAG and peak >= 0.99, f"right vs what B sent: lag {lag}, peak {peak:.4f}"
