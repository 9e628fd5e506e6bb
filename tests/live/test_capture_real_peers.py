"""Passive recording of real phones through a real proxy, seen on a mirror port (issue 16).

Two baresip phones call each other through Kamailio, which anchors the media in rtpengine, on a Linux
bridge whose every port is mirrored to the recorder's interface (``tests/support/pbxrig.py``). Each phone
plays a WAV file of its own; the caller hangs up after 8 s. The call appears twice on the wire (phone ->
rtpengine and rtpengine -> other phone) under one Call-ID. In the recorder's namespace ``tcpdump -w`` always
takes the traffic (the oracle); phase 1 mixes its capture with ``callrec mix`` (the rig and the offline
path), phase 2 runs ``callrec capture`` beside it and mixes the one tape it writes, closed on the BYE.

The oracle of "what each phone sent" is independent of callrec: the phone's own RTP packets to rtpengine in
the capture (read with dpkt, decoded by ffmpeg), themselves checked against the phone's WAV file. The mix
must hold one call, the caller on the left, each channel matching what that phone sent (normalised
cross-correlation >= 0.99) at its arrival time (t = 0 is the first media packet of the call) within 20 ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import dpkt
import numpy as np
import pytest

from tests.support import pbxrig
from tests.support.audio import decode, mix_json, xcorr
from tests.support.synth import ffmpeg_decode, voice

pytestmark = pytest.mark.slow  # five network namespaces, Kamailio, rtpengine, two baresips and tcpdump

RATE = 8000
MAX_LAG = int(0.020 * RATE)  # each channel within 20 ms of where its audio arrived
MIN_PEAK = 0.99
TALK_S = 8.0
WAV_S = 12.0  # longer than the call: the phones never run out of voice
SEEDS = {"A": 1601, "B": 1602}
PHONE_IP = {"A": pbxrig.A_IP, "B": pbxrig.B_IP}
START_IN_WAV_MAX_S = 3.0  # where in its file a phone's first packet may start (baresip starts the file at 0)
DRAIN_S = 1.5  # after the hang-up, before the recorder stops: the BYE and its 200 reach the file
LISTEN_TIMEOUT_S = 20.0
CLOSE_TIMEOUT_S = 20.0  # the capture closes a tape a grace (2 s) after the BYE


@dataclass
class Sent:
    """What one phone sent to rtpengine, as the capture holds it."""

    ssrc: int
    first_arrival: float
    pcm: np.ndarray  # the payloads in sequence order, decoded by ffmpeg


@dataclass
class Truth:
    call_ids: set[str]
    first_media: float  # the first RTP packet of the call, either leg: t = 0 of the mix
    sent: dict[str, Sent]  # "A", "B"
    figures: list[str]


def test_real_phones_through_kamailio_rtpengine_tcpdump_then_mix(tmp_path: Path) -> None:
    """Phase 1: the rig itself, and the offline path (``callrec mix`` on tcpdump's capture)."""
    capture = tmp_path / "mirror.pcap"
    with pbxrig.PbxRig(tmp_path) as rig:
        wavs = _phones(rig, tmp_path)
        _tcpdump(rig, capture)
        placed = rig.call(f"sip:b@{pbxrig.PROXY_IP}", TALK_S)
        time.sleep(DRAIN_S)
        code = rig.stop("tcpdump")
        assert code == 0, f"tcpdump exited {code}\n{rig.logs()}"
        assert "CALL_CLOSED" in [e.get("type") for e in placed["events"]]
    truth = _truth(capture, wavs)
    out = tmp_path / "call.wav"
    results = mix_json(str(capture), "-o", str(out), "--format", "wav")
    _check_mix(results, out, truth, "callrec mix on tcpdump's capture of the mirror")


def test_real_phones_through_kamailio_rtpengine_callrec_capture(tmp_path: Path) -> None:
    """Phase 2: ``callrec capture`` on the mirror writes one tape for the call (though the proxy makes two
    legs), which mixes as phase 1's capture does; tcpdump beside it is the oracle."""
    capture, data = tmp_path / "mirror.pcap", tmp_path / "data"
    with pbxrig.PbxRig(tmp_path) as rig:
        wavs = _phones(rig, tmp_path)
        _tcpdump(rig, capture)
        _callrec_capture(rig, data)
        placed = rig.call(f"sip:b@{pbxrig.PROXY_IP}", TALK_S)
        closed = _wait_tape_closed(data / "tapes")  # on the BYE, a grace later, while still capturing
        code = rig.stop("callrec-capture")
        assert code == 0, f"callrec capture exited {code} on SIGTERM\n{rig.logs()}"
        assert rig.stop("tcpdump") == 0, rig.logs()
        assert "CALL_CLOSED" in [e.get("type") for e in placed["events"]]
        log = rig.procs["callrec-capture"].tail()
    truth = _truth(capture, wavs)
    tapes = sorted(p.parent for p in (data / "tapes").rglob("call.json"))
    assert len(tapes) == 1, f"one tape expected for the call, found {tapes}\n{log}"
    meta = json.loads((tapes[0] / "call.json").read_text())
    assert (meta.get("source"), meta.get("end_reason")) == ("capture", "bye"), meta
    assert closed == tapes[0], f"the tape closed on the BYE was {closed}, the one left is {tapes[0]}"
    out = tmp_path / "tape.wav"
    results = mix_json(str(tapes[0]), "-o", str(out), "--format", "wav")
    _check_mix(results, out, truth, "callrec mix on callrec capture's tape")


# --- the rig's parts -------------------------------------------------------------------------------------


def _phones(rig: pbxrig.PbxRig, work: Path) -> dict[str, np.ndarray]:
    """Both phones up, each with its own voice file; the voices (int16 at 8000 Hz)."""
    wavs = {}
    for party, role in (("A", "pa"), ("B", "pb")):
        pcm = voice(WAV_S, SEEDS[party])
        path = work / f"phone-{party}.wav"
        pbxrig.write_wav(path, pcm)
        with wave.open(str(path)) as w:
            assert (w.getframerate(), w.getnchannels()) == (RATE, 1)
        rig.phone(role, PHONE_IP[party], path, answer=party == "B")
        wavs[party] = pcm
    return wavs


def _tcpdump(rig: pbxrig.PbxRig, capture: Path) -> None:
    """tcpdump on the recorder's mirror interface, every packet written at once; returns once it listens."""
    proc = rig.start(
        "tcpdump", rig.ns["rec"], "tcpdump", "-n", "-i", "eth0", "--immediate-mode", "-U", "-s", "0", "-w", str(capture)
    )
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"tcpdump exited {proc.popen.returncode}\n{proc.tail()}")
        if "listening on" in proc.log.read_text(errors="replace") and capture.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"tcpdump did not start listening within {LISTEN_TIMEOUT_S} s\n{proc.tail()}")


def _callrec_capture(rig: pbxrig.PbxRig, data: Path) -> None:
    """``callrec capture`` on the recorder's mirror interface (no service); returns once it reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLREC_")}
    proc = rig.start(
        "callrec-capture", rig.ns["rec"], sys.executable, "-m", "callrec.cli", "capture",
        "--interface", "eth0", "--data", str(data), "--no-service", env=env,
    )  # fmt: skip
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise AssertionError(f"callrec capture exited {proc.popen.returncode}\n{proc.tail()}")
        if "callrec capture: reading" in proc.log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"callrec capture did not start reading within {LISTEN_TIMEOUT_S} s\n{proc.tail()}")


def _wait_tape_closed(tapes: Path) -> Path:
    """The tape whose call.json says it ended on a BYE, once there is one (bounded)."""
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        for meta in sorted(tapes.rglob("call.json")):
            with contextlib.suppress(OSError, ValueError):  # being rewritten
                reason = json.loads(meta.read_text()).get("end_reason")
                seen.append(f"{meta.parent.name}: {reason!r}")
                if reason == "bye":
                    return meta.parent
        time.sleep(0.1)
    raise AssertionError(f"no tape closed on the BYE within {CLOSE_TIMEOUT_S} s; seen {seen[-4:]}")


# --- the oracle ------------------------------------------------------------------------------------------


def _truth(capture: Path, wavs: dict[str, np.ndarray]) -> Truth:
    """From the capture alone: the Call-IDs, the first media packet, and what each phone sent to rtpengine,
    each checked against the phone's own file."""
    call_ids: set[str] = set()
    first_media: float | None = None
    packets: dict[str, list[tuple[int, float, int, bytes]]] = {"A": [], "B": []}
    with capture.open("rb") as f:
        for ts, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            data = bytes(ip.data.data)
            if ip.data.sport == pbxrig.SIP_PORT or ip.data.dport == pbxrig.SIP_PORT:
                for line in data.split(b"\r\n"):
                    if line.lower().startswith((b"call-id:", b"i:")):
                        call_ids.add(line.split(b":", 1)[1].strip().decode())
                continue
            if len(data) < 12 or data[0] >> 6 != 2 or data[1] & 0x7F != 8:  # PCMA RTP only (RTCP is PT 200+)
                continue
            first_media = ts if first_media is None else min(first_media, ts)
            src, dst = ".".join(map(str, ip.src)), ".".join(map(str, ip.dst))
            for party, phone in PHONE_IP.items():
                if src == phone and dst == pbxrig.PROXY_IP:
                    seq, _rtp_ts, ssrc = struct.unpack_from("!HII", data, 2)
                    packets[party].append((seq, float(ts), ssrc, data[12:]))
    assert first_media is not None, f"no PCMA RTP in {capture}"
    sent, figures = {}, []
    for party, rows in packets.items():
        assert rows, f"phone {party} sent no RTP to rtpengine in {capture}"
        ssrcs = {ssrc for _seq, _ts, ssrc, _p in rows}
        assert len(ssrcs) == 1, f"phone {party} sent {len(ssrcs)} SSRCs"
        first_seq = rows[0][0]
        rows.sort(key=lambda r: (r[0] - first_seq) & 0xFFFF)  # sequence order, across a wrap
        pcm = ffmpeg_decode(b"".join(p for _s, _t, _x, p in rows), "PCMA")
        # the rig: the phone played its own file (from near its start), and G.711 kept it
        lag, peak = xcorr(wavs[party], pcm, int(START_IN_WAV_MAX_S * RATE))
        figures.append(f"{party}: {len(rows)} packets, from {lag / RATE:.3f} s into its file, xcorr {peak:.4f}")
        assert lag >= 0 and peak >= MIN_PEAK, f"phone {party} did not send its file: {figures[-1]}"
        sent[party] = Sent(ssrcs.pop(), min(t for _s, t, _x, _p in rows), pcm)
    assert len(call_ids) == 1, f"the capture should hold one Call-ID, it holds {sorted(call_ids)}"
    return Truth(call_ids, first_media, sent, figures)


# --- the checks ------------------------------------------------------------------------------------------


def _check_mix(results: list[dict[str, object]], out: Path, truth: Truth, what: str) -> None:
    assert len(results) == 1, f"{what}: one call expected, {len(results)} mixed: {results}"
    result = results[0]
    assert result["call_id"] in truth.call_ids, f"{what}: {result['call_id']} is not {truth.call_ids}"
    assert (result["sample_rate"], result["channels"]) == (RATE, 2), result
    streams = result["streams"]
    assert isinstance(streams, list)
    parties = {s["ssrc"]: s["party"] for s in streams}
    for party, sent in truth.sent.items():
        assert parties.get(sent.ssrc) == party, f"{what}: {party}'s SSRC {sent.ssrc:#010x} in {streams}"
    audio = decode(out)
    figures = list(truth.figures)
    for channel, party in enumerate(("A", "B")):  # the caller left
        sent = truth.sent[party]
        expected = round((sent.first_arrival - truth.first_media) * RATE)
        lag, peak = xcorr(audio[expected:, channel], sent.pcm, MAX_LAG)
        figures.append(
            f"{what}: channel {channel} vs phone {party}: xcorr {peak:.4f} at {lag / RATE * 1000:+.1f} ms "
            f"from its arrival ({expected / RATE:.3f} s)"
        )
        assert abs(lag) <= MAX_LAG and peak >= MIN_PEAK, "\n".join(figures)
    print("\n" + "\n".join(figures))
