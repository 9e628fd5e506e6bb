"""Tapes: written by TapeWriter, opened by Wireshark's tshark, mixed by ``callrec mix TAPE``."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from callrec.files.tape import TapeWriter, is_tape, read_info
from callrec.models import CallInfo, Party, RtpMap, Stream
from tests.support import synth
from tests.support.audio import decode, mix_json, need, windows, xcorr

pytestmark = pytest.mark.slow  # tapes mixed and decoded by ffmpeg, tshark (seconds each)

RECORDER = "192.0.2.10"
SRC = "192.0.2.20"
PCMA = {8: RtpMap("PCMA", 8000), 101: RtpMap("telephone-event", 8000)}


def record(
    folder: Path, parties: list[Party], plans: list[synth.StreamPlan], duration: float, cleanly: bool = True
) -> tuple[CallInfo, dict[str, synth.StreamTruth], float]:
    """Write a tape the way the recorder does: each party's stream arrives on its own recorder port."""
    rng = random.Random(5)
    streams = [
        Stream(
            party=p.id,
            local_addr=RECORDER,
            local_port=40000 + 2 * i,
            remote_addr=SRC,
            remote_port=50000 + 2 * i,
            label=str(i),
            rtpmap=dict(PCMA),
        )
        for i, p in enumerate(parties)
    ]
    info = CallInfo(
        call_ids=["tape-call@src"],
        parties=parties,
        streams=streams,
        source="siprec",
        interaction_id="ix-1",
        started_at=1_700_000_000.0,
    )
    packets = []
    truths = {}
    wires = []
    for stream, plan in zip(streams, plans, strict=True):
        wire, truth = synth.build_stream(plan, duration, rng)
        truths[stream.party] = truth
        wires.append(wire)
        for p in wire:
            rtp = struct.pack("!BBHII", 0x80, (0x80 if p.marker else 0) | p.pt, p.seq, p.ts, p.ssrc) + p.payload
            packets.append((1_700_000_000.0 + p.arrival, stream, rtp))
    packets.sort(key=lambda x: x[0])
    tape = TapeWriter(folder, info)
    for ts, stream, rtp in packets:
        tape.write(ts, (SRC, stream.remote_port), (RECORDER, stream.local_port), rtp)
    tape.close(ended_at=packets[-1][0], cleanly=cleanly)
    t0 = synth.placed_start(wires)  # t = 0: the earliest media as placed (SPEC, callrec mix, Time)
    for truth in truths.values():
        truth.audio = truth.audio[int(round(t0 * 8000)) :]
    return info, truths, t0


def two_party(folder: Path, seconds: float, *, cleanly: bool = True) -> None:
    """A plain caller/callee tape."""
    plans = [synth.StreamPlan("A", seed=1), synth.StreamPlan("B", seed=2)]
    record(folder, [Party("A", "caller"), Party("B", "callee")], plans, seconds, cleanly=cleanly)


def test_tape_round_trip_and_two_party_layout(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    folder = tmp_path / "tape"
    parties = [Party("A", "caller", "100", "Alice"), Party("B", "callee", "200", "Bob")]
    info, truths, _ = record(
        folder,
        parties,
        [synth.StreamPlan("A", seed=1, jitter_s=0.1), synth.StreamPlan("B", seed=2, start=0.5)],
        5.0,
    )
    assert is_tape(folder)
    assert read_info(folder) == CallInfo.from_json(json.loads((folder / "call.json").read_text()))
    again = read_info(folder)
    assert again.closed_cleanly and not again.interrupted
    assert again.streams[0].rtpmap[8] == RtpMap("PCMA", 8000)
    assert [p.role for p in again.parties] == ["caller", "callee"]
    out = tmp_path / "tape.wav"
    [report] = mix_json(str(folder), "-o", str(out))
    assert report["call_id"] == "tape-call@src"
    audio = decode(out)
    for ch, party in ((0, "A"), (1, "B")):
        truth = truths[party].audio
        for lo, hi in windows(truth, 8000):
            lag, peak = xcorr(audio[lo:hi, ch], truth[lo:hi], 400)
            assert abs(lag) <= 160 and peak > 0.9, (party, lo, lag, peak)


def test_tape_opens_in_wireshark(tmp_path: Path) -> None:
    tshark = need(shutil.which("tshark"), "tshark")
    need(synth.FFMPEG, "ffmpeg")
    folder = tmp_path / "tape"
    two_party(folder, 1.0)
    out = subprocess.run(
        [
            tshark,
            "-r",
            str(folder / "media.pcap"),
            "-d",
            "udp.port==40000,rtp",
            "-T",
            "fields",
            "-e",
            "ip.dst",
            "-e",
            "udp.dstport",
            "-e",
            "rtp.p_type",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    rows = [r.split("\t") for r in out if r]
    assert len(rows) == 100
    assert {r[0] for r in rows} == {RECORDER}
    assert {r[2] for r in rows if r[1] == "40000"} == {"8"}


def test_conference_is_one_file_with_every_voice_and_no_clipping(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    folder = tmp_path / "conf"
    parties = [Party(f"P{i}", "participant", str(300 + i)) for i in range(1, 4)]
    plans = [synth.StreamPlan(f"P{i}", seed=30 + i, gain=2.6) for i in range(1, 4)]
    _, truths, _ = record(folder, parties, plans, 5.0)
    n = min(len(t.audio) for t in truths.values())
    summed = sum(t.audio[:n].astype(np.int32) for t in truths.values())
    assert np.abs(summed).max() > 36000  # the test means something: a plain sum would clip
    out = tmp_path / "conf.wav"
    [report] = mix_json(str(folder), "-o", str(out))
    assert report["channels"] == 2
    audio = decode(out)
    # three loud voices summed would clip; the limiter keeps every sample below full scale
    assert np.count_nonzero(np.abs(audio.astype(np.int32)) >= 32767) == 0
    assert np.array_equal(audio[:, 0], audio[:, 1])
    # and the output is the sum scaled by a slowly moving gain: no wrap-around, no hard clipping
    m = min(n, len(audio))
    block = 160
    for lo in range(0, m - block, block):
        ref = summed[lo : lo + block].astype(np.float64)
        got = audio[lo : lo + block, 0].astype(np.float64)
        energy = (ref * ref).sum()
        if energy < block * 1000**2:
            continue
        lag_fit = float((got * ref).sum() / energy)
        residual = ((got - lag_fit * ref) ** 2).sum() / energy
        assert 0.3 < lag_fit <= 1.01 and residual < 0.05, (lo, lag_fit, residual)
    for party, truth in truths.items():
        _, peak = xcorr(audio[: len(truth.audio), 0], truth.audio[: len(audio)], 400)
        assert peak > 0.3, f"{party}'s voice is missing from the conference ({peak:.2f})"


def test_interrupted_tape_still_mixes(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    folder = tmp_path / "tape"
    two_party(folder, 2.0, cleanly=False)
    info = read_info(folder)
    assert info.interrupted and not info.closed_cleanly
    [report] = mix_json(str(folder), "-o", str(tmp_path / "x.mp3"))
    assert report["duration_s"] == pytest.approx(2.0, abs=0.05)
