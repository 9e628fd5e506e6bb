"""What ``callrec mix`` accepts: several calls, naming, pcapng, IPv6, SIP over TCP, fragmented INVITEs,
unknown payload types and codecs."""

from __future__ import annotations

import socket
from pathlib import Path

import dpkt
import numpy as np
import pytest

from tests.support import synth
from tests.support.audio import callrec, decode, mix_json, need, windows, xcorr

pytestmark = pytest.mark.slow  # callrec mix and ffmpeg processes (seconds each)

RATE = 8000


def two_calls(tmp_path: Path) -> tuple[Path, synth.Built, synth.Built]:
    need(synth.FFMPEG, "ffmpeg")
    one = synth.build(synth.Scenario(call_id="first/call@host", duration=4.0))
    two = synth.build(
        synth.Scenario(call_id="second call@host", duration=4.0, a_port=20100, b_port=30100, seed=9),
        base_time=1_700_000_001.0,
    )
    pcap = synth.write_pcap(tmp_path / "two.pcap", sorted(one.datagrams + two.datagrams, key=lambda d: d[0]))
    return pcap, one, two


def assert_holds(path: Path, built: synth.Built, channels: int = 2) -> None:
    audio = decode(path, channels=channels)
    for ch, party in ((0, "A"), (1, "B")):
        truth = built.truth[party].audio
        for lo, hi in windows(truth, RATE)[:3]:
            lag, peak = xcorr(audio[lo:hi, ch], truth[lo:hi], 400)
            assert abs(lag) <= 160 and peak > 0.9, (party, lo, lag, peak)


def test_one_file_per_call_named_after_call_id(tmp_path: Path) -> None:
    pcap, one, two = two_calls(tmp_path)
    out = tmp_path / "out"
    reports = {r["call_id"]: r for r in mix_json(str(pcap), "-o", str(out), "--format", "wav")}
    assert set(reports) == {"first/call@host", "second call@host"}
    assert sorted(p.name for p in out.iterdir()) == ["first_call_host.wav", "second_call_host.wav"]
    assert_holds(out / "first_call_host.wav", one)
    assert_holds(out / "second_call_host.wav", two)


def test_file_output_with_several_calls_is_a_folder(tmp_path: Path) -> None:
    pcap, _, _ = two_calls(tmp_path)
    out = tmp_path / "x.wav"
    mix_json(str(pcap), "-o", str(out))
    assert out.is_dir() and len(list(out.iterdir())) == 2


def test_call_id_selects_one_call(tmp_path: Path) -> None:
    pcap, _, two = two_calls(tmp_path)
    out = tmp_path / "only.wav"
    [report] = mix_json(str(pcap), "-o", str(out), "--call-id", "second call@host")
    assert report["call_id"] == "second call@host" and out.is_file()
    assert_holds(out, two)


def frames_of(built: synth.Built, wrap: object) -> list[tuple[float, bytes]]:
    return [(ts, wrap(src, sp, dst, dp, payload)) for ts, src, sp, dst, dp, payload in built.datagrams]  # type: ignore[operator]


def test_pcapng_with_linux_cooked_v2_and_ipv6(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(synth.Scenario(duration=4.0))
    v6 = {synth.A_IP: "2001:db8::1", synth.B_IP: "2001:db8::2"}

    def sll2_ipv6(src: str, sp: int, dst: str, dp: int, payload: bytes) -> bytes:
        payload = payload.replace(b"IN IP4 10.0.0.1", b"IN IP6 2001:db8::1").replace(
            b"IN IP4 10.0.0.2", b"IN IP6 2001:db8::2"
        )
        udp = dpkt.udp.UDP(sport=sp, dport=dp, data=payload)
        udp.ulen = len(udp)
        ip6 = dpkt.ip6.IP6(
            src=socket.inet_pton(socket.AF_INET6, v6[src]),
            dst=socket.inet_pton(socket.AF_INET6, v6[dst]),
            nxt=17,
            hlim=64,
            data=udp,
            plen=len(udp),
        )
        head = b"\x86\xdd\x00\x00" + (2).to_bytes(4, "big") + b"\x00\x01\x00\x06" + bytes(8)
        return head + bytes(ip6)

    path = tmp_path / "v6.pcapng"
    with open(path, "wb") as f:
        writer = dpkt.pcapng.Writer(f, linktype=276)
        for ts, frame in frames_of(built, sll2_ipv6):
            writer.writepkt(frame, ts=ts)
    out = tmp_path / "v6.wav"
    mix_json(str(path), "-o", str(out))
    assert_holds(out, built)


def test_sip_over_tcp_and_fragmented_invite(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(synth.Scenario(duration=4.0))
    frames: list[tuple[float, bytes]] = []
    seqs: dict[tuple[str, str], int] = {}
    for ts, src, sp, dst, dp, payload in built.datagrams:
        if sp != 5060:
            frames.append((ts, synth.udp_frame(src, sp, dst, dp, payload)))
            continue
        if payload.startswith(b"INVITE"):
            # the INVITE over UDP, padded and cut into three IPv4 fragments
            big = payload.replace(b"a=sendrecv", b"a=sendrecv\r\na=x-pad:" + b"z" * 2500)
            old_len = len(payload.split(b"\r\n\r\n", 1)[1])
            new_len = len(big.split(b"\r\n\r\n", 1)[1])
            big = big.replace(b"Content-Length: %d" % old_len, b"Content-Length: %d" % new_len)
            udp = dpkt.udp.UDP(sport=sp, dport=dp, data=big)
            udp.ulen = len(udp)
            raw = bytes(udp)
            chunks = [raw[i : i + 1200] for i in range(0, len(raw), 1200)]
            for k, chunk in reversed(list(enumerate(chunks))):  # out of order
                ip = dpkt.ip.IP(
                    src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, id=4242, data=chunk
                )
                ip.mf = int(k < len(chunks) - 1)
                ip.offset = k * 1200 // 8  # dpkt keeps the wire unit: 8-byte blocks
                ip.len = len(ip)
                eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)
                frames.append((ts, bytes(eth)))
            continue
        # everything else over TCP, each message split across two segments
        key = (src, dst)
        seq = seqs.get(key, 1000)
        for part in (payload[:40], payload[40:]):
            tcp = dpkt.tcp.TCP(
                sport=sp, dport=dp, seq=seq, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=part
            )
            ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
            ip.len = len(ip)
            frames.append(
                (ts, bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip)))
            )
            seq += len(part)
        seqs[key] = seq
    path = tmp_path / "mixed.pcap"
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
    out = tmp_path / "mixed.wav"
    [report] = mix_json(str(path), "-o", str(out))
    assert_holds(out, built)


def test_unknown_payload_type_is_silence_and_the_rest_is_mixed(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(synth.Scenario(duration=4.0))
    datagrams = []
    for ts, src, sp, dst, dp, payload in built.datagrams:
        if src == synth.B_IP and sp != 5060:
            payload = payload[:1] + bytes([(payload[1] & 0x80) | 77]) + payload[2:]  # PT 77: in no SDP
        datagrams.append((ts, src, sp, dst, dp, payload))
    pcap = synth.write_pcap(tmp_path / "pt77.pcap", datagrams)
    out = tmp_path / "pt77.wav"
    proc = callrec("mix", str(pcap), "-o", str(out), "--json")
    assert proc.returncode == 0
    assert "payload type 77" in proc.stderr
    audio = decode(out)
    assert np.abs(audio[:, 1].astype(np.int32)).max() < 100
    truth = built.truth["A"].audio
    lag, peak = xcorr(audio[: len(truth), 0], truth[: len(audio)], 400)
    assert abs(lag) <= 160 and peak > 0.9


def test_unsupported_codec_is_reported(tmp_path: Path) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(synth.Scenario(duration=3.0, b=synth.StreamPlan("B", seed=2, dynamic_pt=96)))
    datagrams = [
        (ts, s, sp, d, dp, p.replace(b"a=rtpmap:96 PCMA/8000", b"a=rtpmap:96 X-SECRET/8000"))
        for ts, s, sp, d, dp, p in built.datagrams
    ]
    pcap = synth.write_pcap(tmp_path / "secret.pcap", datagrams)
    out = tmp_path / "secret.wav"
    [report] = mix_json(str(pcap), "-o", str(out))
    b_stream = next(s for s in report["streams"] if s["party"] == "B")
    assert b_stream["unsupported_codecs"] == ["X-SECRET/8000"]
    assert any("X-SECRET/8000" in w for w in report["warnings"])
    audio = decode(out)
    assert np.abs(audio[:, 1].astype(np.int32)).max() < 100
    assert np.abs(audio[:, 0].astype(np.int32)).max() > 1000


@pytest.mark.parametrize("codec", ["PCMU", "G722"])
def test_codecs_end_to_end(tmp_path: Path, codec: str) -> None:
    need(synth.FFMPEG, "ffmpeg")
    built = synth.build(
        synth.Scenario(
            duration=4.0,
            a=synth.StreamPlan("A", seed=1, codec=codec),
            b=synth.StreamPlan("B", seed=2, codec=codec),
        )
    )
    pcap = synth.write_pcap(tmp_path / "c.pcap", built.datagrams)
    out = tmp_path / "c.wav"
    [report] = mix_json(str(pcap), "-o", str(out))
    assert {s["codec"] for s in report["streams"]} == {f"{codec}/8000"}
    assert_holds(out, built)
