"""The mixer's vectorised lane gives exactly what the per-packet path gives.

``CaptureReader.batches`` must yield the same datagrams as iterating the reader, and ``callrec mix``
the same bytes and the same figures with the lane as without it (``demux.VECTOR_LANE``), on
captures with every impairment, and on captures made to break the lane's runs: RTCP and CSRC packets
in the middle of a stream, a capture clock going back, a sender clock jumping, a truncated file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

import dpkt
import numpy as np
import pytest

from callrec.files.pcap import CaptureReader, Datagram, UdpBlock
from callrec.media.timeline import SsrcTimeline
from callrec.media_limits import OutputOptions
from callrec.mix import demux, mix
from tests.mix.test_mix import SCENARIOS, scenario
from tests.support import synth

pytestmark = pytest.mark.slow  # callrec mix and ffmpeg processes (seconds each)

Datagrams = list[tuple[float, str, int, str, int, bytes]]


def flattened(reader: CaptureReader) -> list[Datagram]:
    out: list[Datagram] = []
    for item in reader.batches():
        if isinstance(item, UdpBlock):
            out += [item.datagram(i) for i in range(len(item))]
        else:
            out.append(item)
    return out


def assert_batches_match(path: Path) -> None:
    with CaptureReader(path) as reader:
        expected = list(reader)
        stats, warnings, truncated = dict(reader.stats), list(reader.warnings), reader.truncated
        got = flattened(reader)
        assert got == expected
        assert (reader.stats, reader.warnings, reader.truncated) == (stats, warnings, truncated)


def mixed(path: Path, tmp_path: Path, lane: bool, fmt: str = "wav", rate: int = 8000) -> tuple[str, list]:
    """(digest of the output, JSON of every call) of one mix."""
    demux.VECTOR_LANE = lane
    try:
        out = tmp_path / f"{'lane' if lane else 'packets'}.{fmt}"
        report = mix(path, out, OutputOptions(format=fmt, rate_hz=rate))
    finally:
        demux.VECTOR_LANE = True
    calls = [{k: v for k, v in c.to_json().items() if k != "output"} for c in report.calls]
    digests = [hashlib.sha256(c.output.read_bytes()).hexdigest() for c in report.calls if c.output]
    return " ".join(digests), [calls, report.stats, report.warnings]


def assert_lane_matches(path: Path, tmp_path: Path, fmt: str = "wav") -> None:
    assert mixed(path, tmp_path, True, fmt) == mixed(path, tmp_path, False, fmt)


@pytest.fixture
def plans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the runs the lane took, to show a test did go through it."""
    sizes: list[int] = []
    original = SsrcTimeline.plan

    def spy(self: SsrcTimeline, *args: object) -> int:
        size = original(self, *args)  # type: ignore[arg-type]
        sizes.append(size)
        return size

    monkeypatch.setattr(SsrcTimeline, "plan", spy)
    return sizes


LANE_SCENARIOS = [name for name in SCENARIOS if name not in ("g722_8000_clock", "codec_change_to_g722")]


@pytest.mark.parametrize("name", LANE_SCENARIOS)
def test_lane_gives_the_per_packet_result_under_each_impairment(
    tmp_path: Path, name: str, plans: list[int]
) -> None:
    for seed in (7, 8):
        built = synth.build(dataclasses.replace(scenario(**SCENARIOS[name]), seed=seed))
        pcap = synth.write_pcap(tmp_path / f"{seed}.pcap", built.datagrams)
        assert_batches_match(pcap)
        assert_lane_matches(pcap, tmp_path)
    if SCENARIOS[name].get("jitter_s", 0) < 0.1:  # with 200 ms of jitter hardly 8 packets come in order
        assert any(plans), "the lane took no run"


def test_lane_figures_match_with_resampled_codecs(tmp_path: Path) -> None:
    """G.722 goes through soxr, whose output may differ by a sample's last bits from run to run on its
    own: the figures must be the same, the audio the same within 2 LSB."""
    built = synth.build(scenario(a_second_codec="G722", jitter_s=0.05))
    pcap = synth.write_pcap(tmp_path / "g722.pcap", built.datagrams)
    _, lane = mixed(pcap, tmp_path, True)
    _, packets = mixed(pcap, tmp_path, False)
    assert lane == packets
    import soundfile

    a = soundfile.read(tmp_path / "lane.wav", dtype="int16")[0].astype(np.int32)
    b = soundfile.read(tmp_path / "packets.wav", dtype="int16")[0].astype(np.int32)
    assert a.shape == b.shape and np.abs(a - b).max() <= 2


def test_long_impaired_call_mp3(tmp_path: Path, plans: list[int]) -> None:
    scn = dataclasses.replace(scenario(jitter_s=0.03, loss=0.01, duplicates=0.01, duration=75.0), seed=3)
    pcap = synth.write_pcap(tmp_path / "long.pcap", synth.build(scn).datagrams)
    assert_lane_matches(pcap, tmp_path, fmt="mp3")
    assert max(plans) > 50


def _with_csrc(rtp: bytes) -> bytes:
    return bytes([rtp[0] | 1]) + rtp[1:12] + b"\x00\x00\x00\x2a" + rtp[12:]


def messy_datagrams() -> Datagrams:
    """A call whose streams are full of what ends a lane run."""
    built = synth.build(scenario(duration=20.0, jitter_s=0.002))
    out: Datagrams = []
    for i, (ts, src, sport, dst, dport, payload) in enumerate(built.datagrams):
        rtp = dport in (20000, 30000) and len(payload) > 12 and payload[0] == 0x80
        if rtp and i % 97 == 5:
            payload = _with_csrc(payload)  # a CSRC: the per-packet path strips it
        if rtp and i % 211 == 7:
            ts -= 0.004  # the capture clock goes back a little
        out.append((ts, src, sport, dst, dport, payload))
        if rtp and i % 150 == 0:
            # RTCP on the next port, RTCP multiplexed on the RTP port, something that is not RTP
            rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1234)
            out.append((ts + 0.0001, src, sport + 1, dst, dport + 1, rr))
            out.append((ts + 0.0002, src, sport, dst, dport, rr))
            out.append((ts + 0.0003, src, sport, dst, dport, b"hello"))
        if rtp and i % 400 == 0:
            # RTP to an endpoint nobody signalled, and a second SSRC on a signalled one
            out.append((ts + 0.0004, src, sport, dst, 40000, payload))
            out.append((ts + 0.0005, src, sport, dst, dport, payload[:8] + b"\x00\x00\x00\x99" + payload[12:]))
    return out


def test_lane_matches_around_what_ends_its_runs(tmp_path: Path, plans: list[int]) -> None:
    pcap = synth.write_pcap(tmp_path / "messy.pcap", messy_datagrams())
    assert_batches_match(pcap)
    assert_lane_matches(pcap, tmp_path)
    assert any(plans)


def test_lane_matches_when_the_sender_clock_jumps(tmp_path: Path, plans: list[int]) -> None:
    """Timestamps jump back by 2 s, then forward by 3 s, mid-run: push re-anchors, so the run ends."""
    built = synth.build(scenario(duration=16.0))
    out: Datagrams = []
    for ts, src, sport, dst, dport, payload in built.datagrams:
        if dport == 30000 and len(payload) > 12:
            (rtp_ts,) = struct.unpack_from("!I", payload, 4)
            t = ts - built.t0
            shift = -16000 if 5.0 <= t < 9.0 else 24000 if t >= 9.0 else 0
            payload = payload[:4] + struct.pack("!I", (rtp_ts + shift) & 0xFFFFFFFF) + payload[8:]
        out.append((ts, src, sport, dst, dport, payload))
    pcap = synth.write_pcap(tmp_path / "jump.pcap", out)
    assert_lane_matches(pcap, tmp_path)
    assert any(size for size in plans)


def test_lane_matches_on_a_truncated_capture(tmp_path: Path) -> None:
    built = synth.build(scenario(duration=30.0))
    whole = synth.write_pcap(tmp_path / "whole.pcap", built.datagrams).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[: len(whole) * 2 // 3 + 7])
    assert_batches_match(cut)
    assert_lane_matches(cut, tmp_path)


def _frames_pcap(path: Path, frames: list[tuple[float, bytes]], linktype: int, nano: bool = False) -> Path:
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, nano=nano, linktype=linktype)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
    return path


def _ip_packet(src: str, dst: str, payload: bytes, ident: int, frag: int = 0x4000) -> bytes:
    udp = struct.pack("!HHHH", 20000, 30000, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, frag, 64, 17, 0,
                       bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))) + udp


@pytest.mark.parametrize("nano", [False, True])
def test_batches_match_iteration_across_link_types_and_odd_frames(tmp_path: Path, nano: bool) -> None:
    rtp = [struct.pack("!BBHII", 0x80, 8, i, 160 * i, 7) + bytes(160) for i in range(300)]
    eth = b"\x04" * 6 + b"\x02" * 6
    raw = [(1e9 + i * 0.01, _ip_packet(synth.A_IP, synth.B_IP, p, i)) for i, p in enumerate(rtp)]
    ethernet = [(t, eth + b"\x08\x00" + ip) for t, ip in raw]
    # odd ones in between: VLAN-tagged, IPv6 (both go to the decoder), a fragment, ARP, a short frame
    vlan = eth + b"\x81\x00\x00\x05\x08\x00" + raw[10][1]
    ipv6 = eth + b"\x86\xdd" + struct.pack("!IHBB16s16s", 0x60000000, 8 + 12, 17, 64, bytes(16), bytes(16)) + (
        struct.pack("!HHHH", 1, 2, 20, 0) + rtp[0][:12]
    )
    fragment = eth + b"\x08\x00" + _ip_packet(synth.A_IP, synth.B_IP, rtp[1], 99, frag=0x2000)
    odd = [vlan, ipv6, fragment, eth + b"\x08\x06" + bytes(28), eth + b"\x08\x00" + bytes(10)]
    for k, frame in enumerate(odd):
        ethernet.insert(40 * (k + 1), (ethernet[40 * (k + 1)][0], frame))
    cooked = [(t, struct.pack("!HHH8sH", 0, 1, 6, bytes(8), 0x0800) + ip) for t, ip in raw]
    for name, frames, linktype in (
        ("ethernet", ethernet, dpkt.pcap.DLT_EN10MB),
        ("raw", raw, 101),
        ("cooked", cooked, 113),
    ):
        path = _frames_pcap(tmp_path / f"{name}.pcap", frames, linktype, nano)
        assert_batches_match(path)
        whole = path.read_bytes()
        (tmp_path / "cut.pcap").write_bytes(whole[:-50])
        assert_batches_match(tmp_path / "cut.pcap")
        # a record claiming a frame larger than any link allows: the rest of the file is damage
        bad = bytearray(whole)
        at = 24 + 100 * (16 + len(frames[0][1]))
        bad[at + 8 : at + 12] = (1 << 30).to_bytes(4, "little")
        (tmp_path / "bad.pcap").write_bytes(bytes(bad))
        assert_batches_match(tmp_path / "bad.pcap")


def test_two_minute_bench_call_through_the_lane(tmp_path: Path, plans: list[int]) -> None:
    """The benchmark's capture (numpy-written records, one stride): the same MP3 either way."""
    from tests.mix.test_mix_memory import bench_module

    bench = bench_module()
    loops = (bench.voice_loop(1), bench.voice_loop(2))
    cap = bench.write_capture(tmp_path, 2 / 60, loops, "call", raw=False)
    assert_lane_matches(cap.path, tmp_path, fmt="mp3")
    assert sum(plans) > 0.9 * 2 * cap.packets
