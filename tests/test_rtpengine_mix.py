"""``callrec mix`` on rtpengine's own recordings (``--recording-method pcap``).

The end-to-end tests drive Debian's real rtpengine (tests/support/rtpengine_peer.py: userspace, in a network
namespace of the test's own, ng control, two parties speaking different speech-like signals in real
time) and mix its spool through the real command line, given either file. The others use the small
recordings rtpengine wrote into tests/data/rtpengine/ (see tests/files/test_rtpengine_meta.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.audio import callrec, decode, xcorr
from tests.support.rtpengine_peer import RecordedCall, RtpenginePeer, Sent

pytestmark = pytest.mark.slow  # Debian's rtpengine in a network namespace

DATA = Path(__file__).resolve().parent / "data" / "rtpengine"
RATE = 8000
MAX_OFFSET_S = 0.020


def check_channel(channel: np.ndarray, sent: Sent, t0: float, what: str) -> tuple[int, float]:
    """The channel holds what the party sent (xcorr >= 0.99), placed within 20 ms of when it was sent
    relative to the call's first packet; returns (offset in samples, xcorr)."""
    expected = int(round((sent.first_send - t0) * RATE))
    truth = np.zeros(expected + len(sent.pcm), np.int16)
    truth[expected:] = sent.pcm
    lag, peak = xcorr(channel, truth, max_lag=RATE // 2)
    print(f"{what}: xcorr {peak:.4f}, offset {lag / RATE * 1000:+.1f} ms")
    assert peak >= 0.99, f"{what}: xcorr {peak:.4f} against what the party sent"
    assert abs(lag) <= MAX_OFFSET_S * RATE, f"{what}: {lag / RATE * 1000:.1f} ms off"
    return lag, peak


def mix_one(given: Path, out: Path, *extra: str) -> dict[str, object]:
    proc = callrec("mix", str(given), "-o", str(out), "--json", *extra)
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    assert isinstance(line, dict)
    return line


def check_mix(call: RecordedCall, output: Path, t0: float) -> None:
    audio = decode(output)
    check_channel(audio[:, 0], call.caller, t0, "left (caller)")
    check_channel(audio[:, 1], call.callee, t0, "right (callee)")


def test_real_rtpengine_spool_mixes_exactly_given_either_file(tmp_path: Path) -> None:
    with RtpenginePeer(tmp_path / "spool") as peer:
        call = peer.call("rec-1@pbx.example", seconds=4.0, callee_delay=0.37, metadata="domain:acme|interaction:i-1")
    assert call.metadata_file is not None and call.pcap_file is not None
    t0 = min(call.caller.first_send, call.callee.first_send)
    for n, given in enumerate((call.pcap_file, call.metadata_file)):
        out = tmp_path / f"out{n}"
        line = mix_one(given, out, "--format", "wav")  # PCM: what is compared is the mix, not an MP3 encoder
        assert line["call_id"] == "rec-1@pbx.example"
        assert line["output"] == str(out / "rec-1_pbx.example.wav")  # named after the Call-ID
        streams = line["streams"]
        assert isinstance(streams, list)
        by_party = {s["party"]: s for s in streams}
        assert by_party["A"]["ssrc"] == call.caller.ssrc and by_party["B"]["ssrc"] == call.callee.ssrc
        assert by_party["A"]["packets"] == call.caller.packets and by_party["B"]["packets"] == call.callee.packets
        assert all(s["lost"] == 0 and s["codec"] == "PCMA/8000" for s in streams)
        check_mix(call, out / "rec-1_pbx.example.wav", t0)


def test_real_rtpengine_calls_in_one_spool_each_mix_on_their_own(tmp_path: Path) -> None:
    # Ethernet framing, rtpengine behind NAT (its SDPs give another address than the packets reached),
    # and the callee speaking first in the second call: the caller (offerer) still goes left
    with RtpenginePeer(tmp_path / "spool", recording_format="eth", advertise="203.0.113.5") as peer:
        first = peer.call("one@x", seconds=2.0, callee_delay=0.2)
        second = peer.call("two@x", seconds=2.0, callee_delay=-0.5)
    for call in (first, second):
        assert call.pcap_file is not None
        out = tmp_path / f"{call.call_id}.wav"
        line = mix_one(call.pcap_file, out, "--format", "wav")
        assert line["output"] == str(out)
        check_mix(call, out, min(call.caller.first_send, call.callee.first_send))


def test_real_rtpengine_callee_reinvite_mid_call_keeps_both_voices(tmp_path: Path) -> None:
    # mid-call the callee re-INVITEs from a new port, the caller answers from a new one, and rtpengine
    # moves both to new ports of its own: the re-INVITE's offer tells where the *caller* sends now
    with RtpenginePeer(tmp_path / "spool") as peer:
        call = peer.call("re-invite@x", seconds=4.0, callee_delay=0.25, reinvite_at=2.0)
    assert call.metadata_file is not None
    assert call.metadata_file.read_text().count("SDP mode: offer") == 2
    line = mix_one(call.metadata_file, tmp_path / "out.wav")
    streams = line["streams"]
    assert isinstance(streams, list)
    packets = {"A": 0, "B": 0}
    for s in streams:  # a stream per port the party sent to: every packet on its party's side
        packets[s["party"]] += s["packets"]
        assert s["ssrc"] == (call.caller.ssrc if s["party"] == "A" else call.callee.ssrc)
    assert packets == {"A": call.caller.packets, "B": call.callee.packets}
    check_mix(call, tmp_path / "out.wav", min(call.caller.first_send, call.callee.first_send))


@pytest.mark.parametrize("name", ["reinvite", "ipv6"])
def test_fixture_with_callee_reinvite_mixes_through_the_command_line(tmp_path: Path, name: str) -> None:
    spool = tmp_path / "spool"
    shutil.copytree(DATA / name, spool)
    (meta,) = (spool / "metadata").iterdir()
    line = mix_one(meta, tmp_path / "out")
    streams = line["streams"]
    assert isinstance(streams, list)
    # the caller sent SSRCs 0xA1..0xA3 (one per m= line and after the re-INVITE), the callee 0xB1..0xB3
    assert sorted((s["ssrc"], s["party"], s["packets"]) for s in streams) == [
        (0xA1, "A", 5), (0xA2, "A", 5), (0xA3, "A", 5), (0xB1, "B", 5), (0xB2, "B", 5), (0xB3, "B", 5),
    ]  # fmt: skip


@pytest.mark.parametrize("damage", ["metadata missing", "pcap missing", "metadata garbage", "still recording"])
def test_a_broken_recording_is_a_one_line_error(tmp_path: Path, damage: str) -> None:
    spool = tmp_path / "spool"
    shutil.copytree(DATA / "simple", spool)
    (pcap,) = (spool / "pcaps").iterdir()
    (meta,) = (spool / "metadata").iterdir()
    given = pcap
    if damage == "metadata missing":
        meta.unlink()
    elif damage == "pcap missing":
        pcap.unlink()
        given = meta
    elif damage == "metadata garbage":
        meta.write_bytes(b"\xff\xfe not what rtpengine writes\n")
    else:
        (spool / "tmp").mkdir()
        meta.rename(spool / "tmp" / meta.name.replace(".txt", ".tmp"))
    proc = callrec("mix", str(given), "-o", str(tmp_path / "out"), check=False)
    print(proc.stderr)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("callrec: error: ")
    assert "rtpengine" in lines[0] or "still being recorded" in lines[0]
    assert not list((tmp_path / "out").glob("*.mp3")) if (tmp_path / "out").exists() else True
