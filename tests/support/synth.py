"""Builds test captures: SIP dialogs plus RTP with every impairment of SPEC.md, and the truth to check against.

Payloads come from an independent encoder (the ffmpeg CLI), captures are written with dpkt's writer, and
the truth (what each channel must hold, and the counters) is computed here without any callrec code.
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import numpy as np

RATE = 8000
FFMPEG = shutil.which("ffmpeg")

# codec name -> (static payload type, ffmpeg raw format, rtp clock, audio rate, bytes per 10 ms)
CODECS = {
    "PCMA": (8, "alaw", 8000, 8000, 80),
    "PCMU": (0, "mulaw", 8000, 8000, 80),
    "G722": (9, "g722", 8000, 16000, 80),
}


def voice(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """A speech-like test signal: noise bursts with a syllable rhythm, distinct per seed."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    noise = rng.standard_normal(n)
    # band-limit a little so G.711/G.722 carry it well
    kernel = np.hanning(9)
    noise = np.convolve(noise, kernel / kernel.sum(), mode="same")
    env = np.zeros(n)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.1, 0.4) * rate)
        if rng.random() < 0.7:
            env[pos : pos + length] = np.hanning(min(length, n - pos)) if length <= n - pos else 1.0
        pos += length + int(rng.uniform(0.02, 0.2) * rate)
    sig = noise * env
    sig = sig / (np.abs(sig).max() + 1e-9) * 12000
    return sig.astype(np.int16)


def ffmpeg_encode(pcm: np.ndarray, codec: str, rate: int = RATE) -> bytes:
    """Encode mono int16 PCM with the ffmpeg CLI (the independent encoder)."""
    assert FFMPEG, "ffmpeg is needed to build test payloads"
    fmt = CODECS[codec][1]
    extra = ["-ar", "16000"] if codec == "G722" else []
    out = subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-f",
            "s16le",
            "-ar",
            str(rate),
            "-ac",
            "1",
            "-i",
            "-",
            *extra,
            "-f",
            fmt,
            "-",
        ],
        input=pcm.tobytes(),
        capture_output=True,
        check=True,
    )
    return out.stdout


def ffmpeg_decode(data: bytes, codec: str) -> np.ndarray:
    """Decode raw codec bytes to 8 kHz int16 with the ffmpeg CLI."""
    assert FFMPEG
    fmt = CODECS[codec][1]
    extra = [] if codec == "G722" else ["-ar", "8000"]
    out = subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-f",
            fmt,
            *extra,
            "-ac",
            "1",
            "-i",
            "-",
            "-f",
            "s16le",
            "-ar",
            "8000",
            "-ac",
            "1",
            "-",
        ],
        input=data,
        capture_output=True,
        check=True,
    )
    return np.frombuffer(out.stdout, np.int16)


@dataclass
class Packet:
    send: float  # nominal send time (s, call clock)
    arrival: float
    seq: int
    ts: int
    ssrc: int
    pt: int
    marker: bool
    payload: bytes


@dataclass
class StreamPlan:
    """How one party's stream is sent and impaired."""

    party: str  # "A" or "B"
    seed: int
    start: float = 0.0
    stop: float | None = None
    ptime_ms: int = 20
    codec: str = "PCMA"
    second_codec: str | None = None  # switch codec at the middle
    jitter_s: float = 0.0
    loss: float = 0.0
    duplicates: float = 0.0
    seq_start: int = 1000
    ts_start: int = 5000
    ssrc_change: bool = False
    dtmf: bool = False
    dtmf_at: float = 0.7  # where the 200 ms RFC 4733 event starts, as a fraction of the stream
    dtmf_ssrc: bool = False  # events on an SSRC of their own (as sipp's uac_pcap sends them)
    silence_gap: bool = False
    dynamic_pt: int | None = None  # send the first codec under this dynamic PT (declared in SDP)
    silent: bool = False  # one-way audio: this party sends nothing
    gain: float = 1.0  # loudness relative to the 12000 peak of voice()


@dataclass
class StreamTruth:
    party: str
    ssrcs: list[int] = field(default_factory=list)
    sent: int = 0  # packets put on the wire, duplicates included
    unique: int = 0
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # on the call clock, 8 kHz
    first_send: float = 0.0
    last_end: float = 0.0


def build_stream(plan: StreamPlan, duration: float, rng: random.Random) -> tuple[list[Packet], StreamTruth]:
    """Packets of one stream (arrival-ordered) and the truth of what its channel must hold."""
    truth = StreamTruth(plan.party)
    if plan.silent:
        return [], truth
    stop = plan.stop if plan.stop is not None else duration
    sig = voice(stop - plan.start + 1, plan.seed)
    if plan.gain != 1.0:
        sig = np.clip(sig.astype(np.float64) * plan.gain, -32767, 32767).astype(np.int16)
    truth_audio = np.zeros(int((duration + 1) * RATE), np.int32)
    packets: list[Packet] = []
    frame_s = plan.ptime_ms / 1000
    n_frames = int((stop - plan.start) / frame_s)
    middle = n_frames // 2
    ssrc = rng.getrandbits(32)
    seq, ts = plan.seq_start, plan.ts_start
    truth.ssrcs.append(ssrc)
    encoded: dict[str, bytes] = {}
    decoded: dict[str, np.ndarray] = {}
    gap = (
        range(int(n_frames * 0.3), int(n_frames * 0.3) + int(1.0 / frame_s)) if plan.silence_gap else range(0)
    )
    dtmf_start = int(n_frames * plan.dtmf_at)
    dtmf = range(dtmf_start, min(n_frames, dtmf_start + int(0.2 / frame_s))) if plan.dtmf else range(0)
    marker_next = True
    for k in range(n_frames):
        codec = plan.codec if (plan.second_codec is None or k < middle) else plan.second_codec
        if plan.ssrc_change and k == middle:
            ssrc = rng.getrandbits(32)
            truth.ssrcs.append(ssrc)
            seq, ts = rng.randrange(65536), rng.getrandbits(32)
        pt_static, _fmt, clock, arate, bytes10 = CODECS[codec]
        pt = plan.dynamic_pt if (plan.dynamic_pt is not None and codec == plan.codec) else pt_static
        send = plan.start + k * frame_s
        if codec not in encoded:
            encoded[codec] = ffmpeg_encode(sig, codec)
            decoded[codec] = ffmpeg_decode(encoded[codec], codec)
        nbytes = bytes10 * plan.ptime_ms // 10
        payload = encoded[codec][k * nbytes : (k + 1) * nbytes]
        ts_step = clock * plan.ptime_ms // 1000
        if k in gap:
            # silence suppression: nothing sent, the timestamp still runs; a CN packet at the start
            if k == gap.start:
                packets.append(Packet(send, send, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, 13, False, b"\x40"))
                seq += 1
            ts += ts_step
            marker_next = True
            continue
        if k in dtmf:
            # RFC 4733: events replace the audio; same timestamp for the whole event
            event_ts = (ts - (k - dtmf.start) * ts_step) & 0xFFFFFFFF
            duration_units = (k - dtmf.start + 1) * ts_step
            body = struct.pack("!BBH", 5, 10 | (0x80 if k == dtmf.stop - 1 else 0), duration_units)
            event_ssrc = (ssrc ^ 0x5A5A5A5A) if plan.dtmf_ssrc else ssrc
            if plan.dtmf_ssrc and event_ssrc not in truth.ssrcs:
                truth.ssrcs.append(event_ssrc)
            packets.append(Packet(send, send, seq & 0xFFFF, event_ts, event_ssrc, 101, k == dtmf.start, body))
            seq += 1
            ts += ts_step
            continue
        packets.append(Packet(send, send, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, pt, marker_next, payload))
        marker_next = False
        # truth: what an independent decoder makes of this payload, where it was sent
        n8k = RATE * plan.ptime_ms // 1000
        pcm = decoded[codec][k * n8k : (k + 1) * n8k]
        at = int(round(send * RATE))
        truth_audio[at : at + len(pcm)] += pcm[: max(0, len(truth_audio) - at)]
        seq += 1
        ts += ts_step
    # impairments on the wire
    wire: list[Packet] = []
    # the first and last packets of each SSRC are never lost: no receiver can know they were sent
    edges = {id(p) for i, p in enumerate(packets) if i < 3 or i >= len(packets) - 3}
    for i in range(1, len(packets)):
        if packets[i].ssrc != packets[i - 1].ssrc:
            edges.update(id(p) for p in packets[max(0, i - 3) : i + 3])
    for p in packets:
        is_audio = p.pt not in (13, 101)
        if is_audio and id(p) not in edges and rng.random() < plan.loss:
            truth.lost += 1
            at = int(round(p.send * RATE))
            n = RATE * plan.ptime_ms // 1000
            truth_audio[at : at + n] = 0
            continue
        wire.append(p)
        if rng.random() < plan.duplicates:
            wire.append(Packet(p.send, p.send, p.seq, p.ts, p.ssrc, p.pt, p.marker, p.payload))
            truth.duplicates += 1
    for p in wire:
        p.arrival = p.send + (rng.uniform(0, plan.jitter_s) if plan.jitter_s else 0.0)
    # duplicates trail their original a little
    wire.sort(key=lambda p: p.arrival)
    truth.sent = len(wire)
    truth.unique = len(wire) - truth.duplicates
    seen_max: dict[int, int] = {}
    seen: set[tuple[int, int]] = set()
    for p in wire:
        key = (p.ssrc, p.seq)
        if key in seen:
            continue
        seen.add(key)
        m = seen_max.get(p.ssrc)
        if m is not None and ((p.seq - m) & 0xFFFF) >= 0x8000:
            truth.reordered += 1
        elif m is None or ((p.seq - m) & 0xFFFF) < 0x8000:
            seen_max[p.ssrc] = p.seq
    truth.audio = np.clip(truth_audio, -32768, 32767).astype(np.int16)
    truth.first_send = packets[0].send if packets else 0.0
    # the recording lasts until the end of the last media frame, speech or telephone-event
    media_packets = [p for p in packets if p.pt != 13]
    truth.last_end = media_packets[-1].send + frame_s if media_packets else 0.0
    return wire, truth


# -- SIP and the capture ----------------------------------------------------------------------------------

A_IP, B_IP = "10.0.0.1", "10.0.0.2"


def sdp(ip: str, port: int, codecs: list[str], dynamic: dict[int, str] | None = None) -> bytes:
    pts = [CODECS[c][0] for c in codecs]
    maps = [f"a=rtpmap:{CODECS[c][0]} {c}/{CODECS[c][2]}" for c in codecs]
    for pt, name in (dynamic or {}).items():
        pts.insert(0, pt)
        maps.insert(0, f"a=rtpmap:{pt} {name}/{CODECS[name][2]}")
    pts.append(101)
    maps += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16"]
    pts.append(13)
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {ip}",
        "s=-",
        f"c=IN IP4 {ip}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}",
        *maps,
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def sip(first: str, call_id: str, cseq: str, body: bytes = b"", to_tag: str = "") -> bytes:
    to = "<sip:200@10.0.0.2>" + (f";tag={to_tag}" if to_tag else "")
    headers = [
        first,
        "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1",
        '"Alice" <sip:100@10.0.0.1>;tag=abc'.join(["From: ", ""]),
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq}",
        "Contact: <sip:100@10.0.0.1>",
    ]
    if body:
        headers.append("Content-Type: application/sdp")
    headers.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


@dataclass
class Scenario:
    """A whole call: signalling, both streams, and the truth."""

    call_id: str = "call-1@test"
    duration: float = 12.0
    a: StreamPlan = field(default_factory=lambda: StreamPlan("A", seed=1))
    b: StreamPlan = field(default_factory=lambda: StreamPlan("B", seed=2))
    seed: int = 7
    a_port: int = 20000
    b_port: int = 30000


@dataclass
class Built:
    t0: float  # capture time of t = 0: the earliest media as placed (see placed_start)
    duration: float  # from t = 0 to the end of the last audio frame
    truth: dict[str, StreamTruth]
    datagrams: list[tuple[float, str, int, str, int, bytes]]
    media: list[tuple[float, str, int, str, int, bytes]]


def build(scn: Scenario, base_time: float = 1_700_000_000.0) -> Built:
    """Datagrams (time, src ip, sport, dst ip, dport, payload) of a call, and its truth."""
    rng = random.Random(scn.seed)
    codecs_a = [scn.a.codec] + ([scn.a.second_codec] if scn.a.second_codec else [])
    codecs_b = [scn.b.codec] + ([scn.b.second_codec] if scn.b.second_codec else [])
    dyn_a = {scn.a.dynamic_pt: scn.a.codec} if scn.a.dynamic_pt else None
    dyn_b = {scn.b.dynamic_pt: scn.b.codec} if scn.b.dynamic_pt else None
    # the caller's SDP says where A receives (what B sends), and the other way round
    codecs_offer = sorted(set(codecs_a + codecs_b))
    offer = sdp(A_IP, scn.a_port, codecs_offer, {**(dyn_a or {}), **(dyn_b or {})})
    answer = sdp(B_IP, scn.b_port, codecs_offer, {**(dyn_a or {}), **(dyn_b or {})})
    out: list[tuple[float, str, int, str, int, bytes]] = []
    t = base_time
    out.append(
        (
            t - 0.5,
            A_IP,
            5060,
            B_IP,
            5060,
            sip(f"INVITE sip:200@{B_IP} SIP/2.0", scn.call_id, "1 INVITE", offer),
        )
    )
    out.append(
        (t - 0.4, B_IP, 5060, A_IP, 5060, sip("SIP/2.0 180 Ringing", scn.call_id, "1 INVITE", to_tag="xyz"))
    )
    out.append(
        (t - 0.1, B_IP, 5060, A_IP, 5060, sip("SIP/2.0 200 OK", scn.call_id, "1 INVITE", answer, "xyz"))
    )
    out.append(
        (
            t - 0.05,
            A_IP,
            5060,
            B_IP,
            5060,
            sip(f"ACK sip:200@{B_IP} SIP/2.0", scn.call_id, "1 ACK", to_tag="xyz"),
        )
    )
    pa, ta = build_stream(scn.a, scn.duration, rng)
    pb, tb = build_stream(scn.b, scn.duration, rng)
    media: list[tuple[float, str, int, str, int, bytes]] = []
    for p in pa:  # A sends to B's address
        media.append((t + p.arrival, A_IP, scn.a_port, B_IP, scn.b_port, _rtp(p)))
    for p in pb:
        media.append((t + p.arrival, B_IP, scn.b_port, A_IP, scn.a_port, _rtp(p)))
    media.sort(key=lambda m: m[0])
    t0 = t + placed_start([pa, pb]) if media else t
    out += media
    end = t + scn.duration + 0.2
    out.append(
        (end, A_IP, 5060, B_IP, 5060, sip(f"BYE sip:200@{B_IP} SIP/2.0", scn.call_id, "2 BYE", to_tag="xyz"))
    )
    out.append(
        (end + 0.01, B_IP, 5060, A_IP, 5060, sip("SIP/2.0 200 OK", scn.call_id, "2 BYE", to_tag="xyz"))
    )
    out.sort(key=lambda m: m[0])
    # shift truths onto the output clock: t = 0 is the earliest media as placed
    shift = int(round((t0 - t) * RATE))
    for truth in (ta, tb):
        truth.audio = (
            truth.audio[shift:] if shift >= 0 else np.concatenate([np.zeros(-shift, np.int16), truth.audio])
        )
    ends = [t + tr.last_end for tr in (ta, tb) if tr.last_end]
    return Built(t0, max(ends) - t0 if ends else 0.0, {"A": ta, "B": tb}, out, media)


def placed_start(streams: list[list[Packet]]) -> float:
    """Where t = 0 of the recording is, on the call clock (SPEC, ``callrec mix``, Time: the earliest media of
    the call as placed). A stream is placed by its least delayed packet, so its media starts at its first
    send time plus the least delay among its first second of audio packets, not at the first arrival."""
    starts = []
    for packets in streams:
        audio = [p for p in packets if p.pt not in (13, 101)]
        if audio:
            first = min(p.send for p in audio)
            starts.append(first + min(p.arrival - p.send for p in audio if p.send < first + 1.0))
    return min(starts) if starts else min((p.arrival for s in streams for p in s), default=0.0)


def _rtp(p: Packet) -> bytes:
    b1 = (0x80 if p.marker else 0) | p.pt
    return struct.pack("!BBHII", 0x80, b1, p.seq, p.ts, p.ssrc) + p.payload


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes, ident: int = 0) -> bytes:
    """An Ethernet/IPv4/UDP frame built with dpkt."""
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(
        src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP, data=udp, id=ident
    )
    ip.len = len(ip)
    return bytes(
        dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    )


def write_pcap(path: Path, datagrams: list[tuple[float, str, int, str, int, bytes]]) -> Path:
    """Write datagrams as an Ethernet pcap with dpkt (an independent writer)."""
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, nano=False, linktype=dpkt.pcap.DLT_EN10MB)
        for i, (ts, src, sport, dst, dport, payload) in enumerate(datagrams):
            writer.writepkt(udp_frame(src, sport, dst, dport, payload, i & 0xFFFF), ts=ts)
    return path
