"""A call seen through a proxy that masks the Call-ID on one side (Kamailio topoh) is one call in ``callrec
mix`` and in an upload's split: caller left, callee right, each relayed packet (same SSRC on both legs) once.
Two unrelated calls stay two."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from callrec.files.pcap import CaptureReader
from callrec.files.scan import calls_in_capture, split_capture
from callrec.files.tape import MEDIA_FILE, write_info
from tests.support import synth
from tests.support.audio import decode, mix_json, need, windows, xcorr

pytestmark = pytest.mark.slow  # callrec mix and ffmpeg processes (seconds each)

RATE = 8000
PROXY_IP = "10.0.0.9"  # as long as synth's A_IP and B_IP: SDP lengths stay as they are
P1, P2 = 40000, 40002  # the proxy's media ports towards the caller (leg 1) and the callee (leg 2)
RELAY_S = 0.0005
Datagram = tuple[float, str, int, str, int, bytes]


def _sdp_via_proxy(payload: bytes, ip: str, port: int, proxy_port: int) -> bytes:
    return payload.replace(f"IN IP4 {ip}".encode(), f"IN IP4 {PROXY_IP}".encode()).replace(
        f"m=audio {port} ".encode(), f"m=audio {proxy_port} ".encode()
    )


def _with_call_id(payload: bytes, call_id: str) -> bytes:
    return re.sub(rb"Call-ID: [^\r\n]*", f"Call-ID: {call_id}".encode(), payload, count=1)


def _with_max_forwards(payload: bytes, hops: int) -> bytes:
    if not payload.startswith((b"INVITE", b"ACK", b"BYE")):
        return payload  # responses carry none
    head, _, rest = payload.partition(b"\r\n")
    return head + f"\r\nMax-Forwards: {hops}".encode() + b"\r\n" + rest


def through_topoh(built: synth.Built, scn: synth.Scenario, masked: str, *, hops: bool = True) -> list[Datagram]:
    """The call of ``built`` as captured at a proxy (with rtpengine) that masks the Call-ID towards the callee:
    leg 1 caller <-> proxy keeps the Call-ID, leg 2 proxy <-> callee carries ``masked``; the INVITE forwarded
    with Max-Forwards one lower (``hops``; else no Max-Forwards at all: only media tells the legs are one
    call); every RTP packet relayed with its SSRC, half a millisecond later."""
    a, b = synth.A_IP, synth.B_IP
    out: list[Datagram] = []
    for t, src, sport, _dst, dport, payload in built.datagrams:
        if sport == 5060:  # SIP
            if src == a:  # from the caller: to the proxy, then forwarded to the callee
                forwarded = _with_call_id(_sdp_via_proxy(payload, a, scn.a_port, P2), masked)
                if hops:
                    payload, forwarded = _with_max_forwards(payload, 70), _with_max_forwards(forwarded, 69)
                out.append((t, a, 5060, PROXY_IP, 5060, payload))
                out.append((t + 0.001, PROXY_IP, 5060, b, 5060, forwarded))
            else:  # from the callee: to the proxy under the masked Call-ID, then back to the caller
                out.append((t, b, 5060, PROXY_IP, 5060, _with_call_id(payload, masked)))
                out.append((t + 0.001, PROXY_IP, 5060, a, 5060, _sdp_via_proxy(payload, b, scn.b_port, P1)))
        elif src == a:  # the caller's RTP: to rtpengine on leg 1, relayed to the callee on leg 2
            out.append((t, a, sport, PROXY_IP, P1, payload))
            out.append((t + RELAY_S, PROXY_IP, P2, b, dport, payload))
        else:
            out.append((t, b, sport, PROXY_IP, P2, payload))
            out.append((t + RELAY_S, PROXY_IP, P1, a, dport, payload))
    out.sort(key=lambda d: d[0])
    return out


def assert_holds(path: Path, built: synth.Built) -> None:
    audio = decode(path, channels=2)
    for ch, party in ((0, "A"), (1, "B")):
        truth = built.truth[party].audio
        spoken = windows(truth, RATE)
        assert spoken, party
        for lo, hi in spoken:
            lag, peak = xcorr(audio[lo:hi, ch], truth[lo:hi], 400)
            # the leg nearer the proxy's capture point is 0.5 ms (4 samples) off the other: within 1 ms
            assert abs(lag) <= 8 and peak > 0.99, (party, lo, lag, peak)


@pytest.fixture
def topoh(tmp_path: Path) -> tuple[Path, synth.Built]:
    need(synth.FFMPEG, "ffmpeg")
    scn = synth.Scenario(call_id="a84b4c76e66710@10.0.0.1", duration=4.0)
    built = synth.build(scn)
    pcap = synth.write_pcap(tmp_path / "topoh.pcap", through_topoh(built, scn, "atpsh-65f1a2b3-1c2d-3e4f@10.0.0.9"))
    return pcap, built


def test_masked_call_id_legs_mix_as_one_call(tmp_path: Path, topoh: tuple[Path, synth.Built]) -> None:
    pcap, built = topoh
    out = tmp_path / "out"
    (report,) = mix_json(str(pcap), "-o", str(out), "--format", "wav")
    assert report["call_id"] == "a84b4c76e66710@10.0.0.1"
    # each party's packets crossed the capture point twice (both legs): received twice, the second a duplicate
    by_party = {s["party"]: s for s in report["streams"]}
    assert set(by_party) == {"A", "B"}
    for party in ("A", "B"):
        sent = sum(1 for d in built.media if d[1] == (synth.A_IP if party == "A" else synth.B_IP))
        assert by_party[party]["packets"] == 2 * sent and by_party[party]["duplicates"] == sent, by_party[party]
        assert by_party[party]["lost"] == 0
    assert_holds(out / "a84b4c76e66710_10.0.0.1.wav", built)


def test_masked_call_id_selects_the_same_call(tmp_path: Path, topoh: tuple[Path, synth.Built]) -> None:
    pcap, built = topoh
    out = tmp_path / "one.wav"
    (report,) = mix_json(str(pcap), "-o", str(out), "--format", "wav", "--call-id", "atpsh-65f1a2b3-1c2d-3e4f@10.0.0.9")
    assert report["call_id"] == "a84b4c76e66710@10.0.0.1"
    assert_holds(out, built)


def test_an_upload_splits_the_legs_into_one_call(tmp_path: Path, topoh: tuple[Path, synth.Built]) -> None:
    pcap, _ = topoh
    (info,) = calls_in_capture(pcap)
    assert info.call_ids == ["a84b4c76e66710@10.0.0.1", "atpsh-65f1a2b3-1c2d-3e4f@10.0.0.9"]
    # what is sent to the callee (on leg 2) and to the proxy's leg-1 port comes from A; the rest from B
    assert sorted((s.party, s.local_addr, s.local_port) for s in info.streams) == sorted([
        ("A", PROXY_IP, P1), ("A", synth.B_IP, 30000), ("B", PROXY_IP, P2), ("B", synth.A_IP, 20000),
    ])  # fmt: skip
    folder = tmp_path / "split"
    folder.mkdir()
    ((split_info, media),) = split_capture(pcap, folder)
    assert split_info.call_ids == info.call_ids and media.stat().st_size > 0


def test_unrelated_calls_with_the_same_from_stay_two(tmp_path: Path) -> None:
    """synth gives every call the same From tag: only a forwarded INVITE (lower Max-Forwards, while the first
    is unanswered) joins a call; a second call afterwards, or one that was not forwarded, does not."""
    need(synth.FFMPEG, "ffmpeg")
    one = synth.build(synth.Scenario(call_id="first@host", duration=3.0))
    two = synth.build(synth.Scenario(call_id="second@host", duration=3.0, a_port=20100, b_port=30100, seed=9),
                      base_time=1_700_000_000.2)  # fmt: skip
    # both INVITEs carry the same Max-Forwards (neither was forwarded by the other's proxy), and the second
    # comes while the first is still unanswered
    datagrams = [(t, s, sp, d, dp, _with_max_forwards(p, 70) if sp == 5060 else p) for t, s, sp, d, dp, p in
                 one.datagrams + two.datagrams]  # fmt: skip
    pcap = synth.write_pcap(tmp_path / "two.pcap", sorted(datagrams, key=lambda d: d[0]))
    assert [i.call_ids for i in calls_in_capture(pcap)] == [["first@host"], ["second@host"]]
    reports = mix_json(str(pcap), "-o", str(tmp_path / "out"), "--format", "wav")
    assert sorted(r["call_id"] for r in reports) == ["first@host", "second@host"]


@pytest.mark.parametrize("callee_start", [0.0, 0.5])
def test_legs_that_only_media_ties_mix_as_one_call(tmp_path: Path, callee_start: float) -> None:
    """No Max-Forwards to compare: the legs are one call because leg 2 carries leg 1's SSRCs."""
    need(synth.FFMPEG, "ffmpeg")
    callee = synth.StreamPlan("B", seed=2, start=callee_start)
    scn = synth.Scenario(call_id="only-media@10.0.0.1", duration=4.0, b=callee)
    built = synth.build(scn)
    pcap = synth.write_pcap(tmp_path / "c.pcap", through_topoh(built, scn, "masked@10.0.0.9", hops=False))
    out = tmp_path / "out"
    (report,) = mix_json(str(pcap), "-o", str(out), "--format", "wav")
    assert report["call_id"] == "only-media@10.0.0.1"
    assert sorted(s["party"] for s in report["streams"]) == ["A", "B"]
    for stream in report["streams"]:
        sent = sum(1 for d in built.media if d[1] == (synth.A_IP if stream["party"] == "A" else synth.B_IP))
        # every packet once (the first ones of a leg that began to mix on its own before it joined are in the
        # call through their copies on the other leg)
        assert stream["packets"] - stream["duplicates"] == sent and stream["lost"] == 0, stream
    assert_holds(out / "only-media_10.0.0.1.wav", built)


def test_an_upload_joins_legs_that_only_media_ties(tmp_path: Path) -> None:
    """split_capture: leg 2's file (its INVITE, its packets so far) goes into the call's, in time order; the
    tape it makes mixes as one call."""
    need(synth.FFMPEG, "ffmpeg")
    scn = synth.Scenario(call_id="upload@10.0.0.1", duration=3.0)
    built = synth.build(scn)
    pcap = synth.write_pcap(tmp_path / "c.pcap", through_topoh(built, scn, "masked-up@10.0.0.9", hops=False))
    assert len(calls_in_capture(pcap)) == 2  # signalling alone: two dialogs
    folder = tmp_path / "split"
    folder.mkdir()
    ((info, media),) = split_capture(pcap, folder)
    assert info.call_ids == ["upload@10.0.0.1", "masked-up@10.0.0.9"]
    assert [p.name for p in folder.iterdir()] == [media.name]
    with CaptureReader(media) as reader:
        times = [d.ts for d in reader]
    assert times == sorted(times) and len(times) == len(through_topoh(built, scn, "m", hops=False))
    tape = tmp_path / "tape"
    tape.mkdir()
    media.rename(tape / MEDIA_FILE)
    write_info(tape, info)
    (report,) = mix_json(str(tape), "-o", str(tmp_path / "out.wav"), "--format", "wav")
    assert report["call_id"] == "upload@10.0.0.1"
    assert_holds(tmp_path / "out.wav", built)


@pytest.mark.parametrize("apart_s", [0.01, 3.0])
def test_two_calls_of_a_fixed_ssrc_device_stay_two(tmp_path: Path, apart_s: float) -> None:
    """Some devices always send one SSRC: two calls of such a device (even 10 ms apart) stay two, as their
    packets are not relayed from one call into the other (each leaves its own sender, not the host the other
    call's copy was sent to)."""
    need(synth.FFMPEG, "ffmpeg")
    one = synth.build(synth.Scenario(call_id="fixed-1@host", duration=4.0, seed=3))
    two = synth.build(synth.Scenario(call_id="fixed-2@host", duration=4.0, a_port=20100, b_port=30100, seed=3),
                      base_time=1_700_000_000.0 + apart_s)  # fmt: skip
    assert {d[5][8:12] for d in one.media} == {d[5][8:12] for d in two.media}  # the same two SSRCs
    pcap = synth.write_pcap(tmp_path / "two.pcap", sorted(one.datagrams + two.datagrams, key=lambda d: d[0]))
    reports = mix_json(str(pcap), "-o", str(tmp_path / "out"), "--format", "wav")
    assert sorted(r["call_id"] for r in reports) == ["fixed-1@host", "fixed-2@host"]
    folder = tmp_path / "split"
    folder.mkdir()
    assert [i.call_ids for i, _ in split_capture(pcap, folder)] == [["fixed-1@host"], ["fixed-2@host"]]
