"""Time ``callrec mix`` on an hours-long two-party G.711 call beside ffmpeg on the same audio.

Usage: python bench/mix.py [--hours 1] [--long-hours 8] [--workdir DIR] [--cpu 0] [--repeat 1]
                           [--lame-qualities 2,5,7,9] [--profile] [--keep] [--srtp]

Generates a capture of one call (SIP INVITE/180/200 OK/ACK with SDP, two PCMA RTP streams at 20 ms
ptime, BYE/200 OK) and the two raw A-law streams it carries, then, each command pinned to one core:
  - callrec: capture -> stereo MP3 16 kbit/s (the ``callrec mix`` defaults), wall time and peak RSS;
  - ffmpeg:  the two raw A-law streams -> the same MP3 (decode + encode only, no capture parsing);
  - callrec again on a ``--long-hours`` call: its peak RSS must not grow with the call's length;
  - lame alone on the same length of stereo 8 kHz audio (lameenc at several qualities, and the system
    libmp3lame in joint and L/R stereo, which lameenc cannot choose): the encoder's floor;
  - with ``--profile``, callrec under py-spy, the samples added up by pipeline stage;
  - with ``--srtp``, the same call as SDES-SRTP (AES_CM_128_HMAC_SHA1_80: RTP/SAVP with a=crypto, every
    packet protected by libsrtp) beside the plain one, interleaved: what decrypting costs per packet.
Targets (the mixer issue): callrec at least 2x ffmpeg's speed, peak RSS under 150 MB for both lengths.

The capture is written as numpy record blocks (one minute of packets per write), so generating an 8-hour
call (2.9 M packets, ~660 MB) takes seconds and little memory.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import synth  # noqa: E402 - the SIP/SDP messages and voice signal the tests use

RATE = 8000
PTIME_US = 20_000
PAYLOAD_BYTES = 160  # 20 ms of A-law
PACKETS_PER_S = 50
LOOP_S = 10  # seconds of pre-encoded voice each party repeats
BLOCK_PACKETS = 60 * PACKETS_PER_S  # packets per direction in one write
B_OFFSET_US = 10_000  # B's packets arrive between A's
JITTER_US = 3_000  # uniform arrival jitter; keeps packets in order on the wire
BASE_US = 1_700_000_000 * 1_000_000
A_IP, B_IP = synth.A_IP, synth.B_IP
A_PORT, B_PORT = 20000, 30000
CALL_ID = "bench-mix-1@10.0.0.1"
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
MP3_TARGET_KB_PER_MIN = 120.0

# one Ethernet/IPv4/UDP/RTP PCMA record: pcap record header (little-endian), then network byte order
RECORD = np.dtype([
    ("ts_sec", "<u4"), ("ts_usec", "<u4"), ("incl_len", "<u4"), ("orig_len", "<u4"),
    ("eth_dst", "S6"), ("eth_src", "S6"), ("eth_type", ">u2"),
    ("ip_vihl", "u1"), ("ip_tos", "u1"), ("ip_len", ">u2"), ("ip_id", ">u2"), ("ip_frag", ">u2"),
    ("ip_ttl", "u1"), ("ip_proto", "u1"), ("ip_sum", ">u2"), ("ip_src", ">u4"), ("ip_dst", ">u4"),
    ("udp_sport", ">u2"), ("udp_dport", ">u2"), ("udp_len", ">u2"), ("udp_sum", ">u2"),
    ("rtp_b0", "u1"), ("rtp_b1", "u1"), ("rtp_seq", ">u2"), ("rtp_ts", ">u4"), ("rtp_ssrc", ">u4"),
    ("payload", "u1", (PAYLOAD_BYTES,)),
])
FRAME_BYTES = RECORD.itemsize - 16
RTP_BYTES = 12 + PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class Party:
    """One direction of the call: who sends, to where, and its RTP bases."""

    src: str
    sport: int
    dst: str
    dport: int
    mac_src: bytes
    mac_dst: bytes
    ssrc: int
    seq0: int
    ts0: int
    offset_us: int
    loop: np.ndarray  # (packets, PAYLOAD_BYTES) uint8: the A-law payloads it repeats


@dataclass(frozen=True, slots=True)
class Capture:
    path: Path
    raw_a: Path
    raw_b: Path
    packets: int  # RTP packets per direction
    seconds: float  # from the first media packet to the end of the last frame
    bytes: int


def _ip4(addr: str) -> int:
    return int.from_bytes(bytes(int(x) for x in addr.split(".")), "big")


def _ip_checksum(words: np.ndarray) -> np.ndarray:
    """RFC 791 header checksum from the header's 16-bit words summed (uint32 or uint64)."""
    s = words.astype(np.uint64)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return (~s & 0xFFFF).astype(np.uint16)


def _frame(src: str, sport: int, dst: str, dport: int, payload: bytes, ident: int) -> bytes:
    """One Ethernet/IPv4/UDP frame (for the SIP messages)."""
    mac_src, mac_dst = (MAC_A, MAC_B) if src == A_IP else (MAC_B, MAC_A)
    total = 28 + len(payload)
    s, d = _ip4(src), _ip4(dst)
    words = 0x4500 + total + ident + 0x4000 + 0x4011 + (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF)
    checksum = int(_ip_checksum(np.array([words]))[0])
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, total, ident, 0x4000, 64, 17, checksum, s, d)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    return mac_dst + mac_src + b"\x08\x00" + ip + udp + payload


def _write_record(f: BinaryIO, t_us: int, frame: bytes) -> None:
    f.write(struct.pack("<IIII", t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame)) + frame)


def voice_loop(seed: int) -> np.ndarray:
    """``LOOP_S`` seconds of speech-like noise, A-law encoded by ffmpeg, as (packets, 160) uint8."""
    alaw = synth.ffmpeg_encode(synth.voice(LOOP_S, seed), "PCMA")
    return np.frombuffer(alaw, np.uint8).reshape(-1, PAYLOAD_BYTES).copy()


def _fill(block: np.ndarray, party: Party, k: np.ndarray, jitter: np.ndarray) -> None:
    """Fill one direction's records for packet numbers ``k``."""
    t_us = BASE_US + k * PTIME_US + party.offset_us + jitter
    block["ts_sec"] = t_us // 1_000_000
    block["ts_usec"] = t_us % 1_000_000
    block["eth_dst"], block["eth_src"] = party.mac_dst, party.mac_src
    ident = (k & 0xFFFF).astype(np.uint32)
    s, d = _ip4(party.src), _ip4(party.dst)
    fixed = 0x4500 + 20 + 8 + RTP_BYTES + 0x4000 + 0x4011 + (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF)
    block["ip_id"] = ident
    block["ip_sum"] = _ip_checksum(ident + fixed)
    block["ip_src"], block["ip_dst"] = s, d
    block["udp_sport"], block["udp_dport"] = party.sport, party.dport
    block["rtp_b1"] = np.where(k == 0, 0x80 | 8, 8)  # marker on the first packet, PT 8 (PCMA)
    block["rtp_seq"] = (party.seq0 + k) & 0xFFFF
    block["rtp_ts"] = (party.ts0 + k * PAYLOAD_BYTES) & 0xFFFFFFFF
    block["rtp_ssrc"] = party.ssrc
    block["payload"] = party.loop[k % len(party.loop)]


def write_capture(
    workdir: Path, hours: float, loops: tuple[np.ndarray, np.ndarray], name: str, raw: bool = True
) -> Capture:
    """Write the capture of one ``hours``-long call and (``raw``) the raw A-law stream of each direction."""
    packets = int(round(hours * 3600 * PACKETS_PER_S))
    rng = np.random.default_rng(11)
    a = Party(A_IP, A_PORT, B_IP, B_PORT, MAC_A, MAC_B, 0x1A2B3C4D, 61000, 4_294_000_000, 0, loops[0])
    b = Party(B_IP, B_PORT, A_IP, A_PORT, MAC_B, MAC_A, 0x5E6F7081, 1200, 123_456, B_OFFSET_US, loops[1])
    path, raw_a, raw_b = workdir / f"{name}.pcap", workdir / f"{name}-a.alaw", workdir / f"{name}-b.alaw"
    block = np.zeros(2 * BLOCK_PACKETS, RECORD)
    # what every packet shares
    block["incl_len"] = block["orig_len"] = FRAME_BYTES
    block["eth_type"] = 0x0800
    block["ip_vihl"], block["ip_len"], block["ip_frag"] = 0x45, 20 + 8 + RTP_BYTES, 0x4000
    block["ip_ttl"], block["ip_proto"] = 64, 17
    block["udp_len"] = 8 + RTP_BYTES
    block["rtp_b0"] = 0x80
    offer = synth.sdp(A_IP, A_PORT, ["PCMA"])
    answer = synth.sdp(B_IP, B_PORT, ["PCMA"])
    invite = f"INVITE sip:200@{B_IP} SIP/2.0"
    ident = 0
    raw_a_file = open(raw_a if raw else os.devnull, "wb")  # noqa: SIM115 - closed by the with below
    raw_b_file = open(raw_b if raw else os.devnull, "wb")  # noqa: SIM115
    with open(path, "wb", buffering=1 << 22) as f, raw_a_file as fa, raw_b_file as fb:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        # signalling before the media: INVITE (SDP offer), 180, 200 OK (SDP answer), ACK
        for dt_ms, src, dst, msg in (
            (-500, A_IP, B_IP, synth.sip(invite, CALL_ID, "1 INVITE", offer)),
            (-400, B_IP, A_IP, synth.sip("SIP/2.0 180 Ringing", CALL_ID, "1 INVITE", to_tag="xyz")),
            (-100, B_IP, A_IP, synth.sip("SIP/2.0 200 OK", CALL_ID, "1 INVITE", answer, "xyz")),
            (-50, A_IP, B_IP, synth.sip(f"ACK sip:200@{B_IP} SIP/2.0", CALL_ID, "1 ACK", to_tag="xyz")),
        ):
            ident += 1
            _write_record(f, BASE_US + dt_ms * 1000, _frame(src, 5060, dst, 5060, msg, ident))
        # the media, one block of interleaved A, B, A, B ... records a write
        for first in range(0, packets, BLOCK_PACKETS):
            k = np.arange(first, min(first + BLOCK_PACKETS, packets), dtype=np.int64)
            out = block[: 2 * len(k)]
            _fill(out[0::2], a, k, rng.integers(0, JITTER_US, len(k)))
            _fill(out[1::2], b, k, rng.integers(0, JITTER_US, len(k)))
            f.write(out.tobytes())
            fa.write(out["payload"][0::2].tobytes())
            fb.write(out["payload"][1::2].tobytes())
        end_us = BASE_US + packets * PTIME_US + 200_000
        for dt_us, src, dst, msg in (
            (0, A_IP, B_IP, synth.sip(f"BYE sip:200@{B_IP} SIP/2.0", CALL_ID, "2 BYE", to_tag="xyz")),
            (10_000, B_IP, A_IP, synth.sip("SIP/2.0 200 OK", CALL_ID, "2 BYE", to_tag="xyz")),
        ):
            ident += 1
            _write_record(f, end_us + dt_us, _frame(src, 5060, dst, 5060, msg, ident))
    # t = 0 is A's first packet; B's last frame ends B_OFFSET_US (plus its jitter) later than A's
    seconds = (packets * PTIME_US + B_OFFSET_US) / 1e6
    return Capture(path, raw_a, raw_b, packets, seconds, path.stat().st_size)


SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"


def srtp_capture(cap: Capture, workdir: Path, name: str) -> Capture:
    """``cap`` as SDES-SRTP: each party's SDP RTP/SAVP with an a=crypto of its own, each RTP packet protected
    with that key by libsrtp (pylibsrtp), as tests/support/srtp_calls.py does for the tests."""
    from tests.support import srtp_calls

    keys = {ip: os.urandom(30) for ip in (A_IP, B_IP)}
    sessions = {ip: srtp_calls.sender(SRTP_SUITE, key) for ip, key in keys.items()}
    path = workdir / f"{name}.pcap"
    with open(cap.path, "rb") as src, open(path, "wb", buffering=1 << 22) as f:
        f.write(src.read(24))
        ident = 0
        while head := src.read(16):
            t_sec, t_usec, incl, _ = struct.unpack("<IIII", head)
            frame = src.read(incl)
            ip_src, ip_dst = (".".join(map(str, frame[i : i + 4])) for i in (26, 30))
            sport, dport = struct.unpack_from("!HH", frame, 34)
            payload = frame[42:]
            if sport == 5060:
                payload = srtp_calls.savp(payload, SRTP_SUITE, keys[ip_src])
            else:
                payload = sessions[ip_src].protect(payload)
            ident = (ident + 1) & 0xFFFF
            _write_record(f, t_sec * 1_000_000 + t_usec, _frame(ip_src, sport, ip_dst, dport, payload, ident))
    return Capture(path, cap.raw_a, cap.raw_b, cap.packets, cap.seconds, path.stat().st_size)


# -- measuring ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    wall_s: float
    cpu_s: float  # user + system
    max_rss_mb: float
    stdout: str


# the timed commands run as on an installed system: Python may cache bytecode (a shell or CI that sets
# PYTHONDONTWRITEBYTECODE would make callrec compile its own source on every run, ~0.1 s)
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(cmd: list[str], cpu: int) -> Run:
    """Run ``cmd`` pinned to one core; wall time and that child's own rusage (``os.wait4``)."""

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=pin, env=CHILD_ENV)
        # reap this very child with wait4: its own rusage, not the maximum over every child so far
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{err.read().decode(errors='replace')}")
        return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read().decode())


def best_of(cmds: list[list[str]], cpu: int, repeat: int) -> list[Run]:
    """Each command ``repeat`` times, interleaved (so a busy moment hits all alike); the fastest of each.
    One untimed run of each first: inputs in the page cache and bytecode cached, alike for every command."""
    runs: list[list[Run]] = [[] for _ in cmds]
    for cmd in cmds:
        measure(cmd, cpu)
    for _ in range(repeat):
        for i, cmd in enumerate(cmds):
            runs[i].append(measure(cmd, cpu))
    return [min(r, key=lambda x: x.wall_s) for r in runs]


def mp3_duration(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )
    return float(out.stdout.strip())


def callrec_cmd(capture: Path, out: Path) -> list[str]:
    exe = Path(sys.executable).parent / "callrec"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "callrec.cli"]
    return [*base, "mix", str(capture), "-o", str(out), "--json"]


def ffmpeg_cmd(raw_a: Path, raw_b: Path, out: Path, quality: int | None = None) -> list[str]:
    extra = ["-compression_level", str(quality)] if quality is not None else []
    return [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-threads", "1",
        "-f", "alaw", "-ar", "8000", "-ac", "1", "-i", str(raw_a),
        "-f", "alaw", "-ar", "8000", "-ac", "1", "-i", str(raw_b),
        "-filter_complex", "[0:a][1:a]amerge=inputs=2[a]", "-map", "[a]",
        "-c:a", "libmp3lame", "-b:a", "16k", *extra, "-ar", "8000", "-ac", "2", str(out),
    ]


def _stereo_pcm(loops: tuple[np.ndarray, np.ndarray]) -> list[bytes]:
    """The two parties' loops decoded and interleaved, as 0.5 s blocks of int16 (what callrec hands lame)."""
    from callrec.media.codecs.g711 import ALAW_TABLE

    left, right = (ALAW_TABLE.take(loop.reshape(-1)) for loop in loops)
    stereo = np.ascontiguousarray(np.stack([left, right], axis=1))
    return [stereo[i : i + RATE // 2].tobytes() for i in range(0, len(stereo), RATE // 2)]


def _pinned(cpu: int, work: Callable[[], None]) -> float:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        t0 = time.perf_counter()
        work()
        return time.perf_counter() - t0
    finally:
        os.sched_setaffinity(0, before)


def lameenc_floor(blocks: list[bytes], seconds: float, quality: int, cpu: int) -> float:
    """Seconds lameenc (callrec's encoder) alone needs for ``seconds`` of stereo 8 kHz -> 16 kbit/s."""
    import lameenc

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(16)
    encoder.set_in_sample_rate(RATE)
    encoder.set_out_sample_rate(RATE)
    encoder.set_channels(2)
    encoder.set_quality(quality)

    def work() -> None:
        for i in range(int(seconds * 2)):
            encoder.encode(blocks[i % len(blocks)])
        encoder.flush()

    return _pinned(cpu, work)


# libmp3lame's MPEG_mode: what lameenc cannot choose (it always leaves lame's joint stereo on)
LAME_STEREO, LAME_JOINT_STEREO = 0, 1


def libmp3lame_floor(
    lib: ctypes.CDLL, blocks: list[bytes], seconds: float, quality: int, mode: int, short_blocks: bool, cpu: int
) -> float:
    """The same through the system libmp3lame (ctypes), where the stereo mode and short blocks can be set."""
    lib.lame_init.restype = ctypes.c_void_p
    gfp = ctypes.c_void_p(lib.lame_init())
    for setter, value in (
        (lib.lame_set_in_samplerate, RATE), (lib.lame_set_out_samplerate, RATE), (lib.lame_set_num_channels, 2),
        (lib.lame_set_brate, 16), (lib.lame_set_quality, quality), (lib.lame_set_mode, mode),
        (lib.lame_set_no_short_blocks, 0 if short_blocks else 1),
    ):
        setter(gfp, value)
    if lib.lame_init_params(gfp) != 0:
        raise RuntimeError("lame_init_params failed")
    out = ctypes.create_string_buffer(1 << 16)
    frames = len(blocks[0]) // 4

    def work() -> None:
        for i in range(int(seconds * 2)):
            lib.lame_encode_buffer_interleaved(gfp, blocks[i % len(blocks)], frames, out, len(out))
        lib.lame_encode_flush(gfp, out, len(out))

    try:
        return _pinned(cpu, work)
    finally:
        lib.lame_close(gfp)


# py-spy frames -> the pipeline stage they belong to; a sample goes to the innermost frame listed here
PROFILE_STAGES = (
    ("startup: imports", "_find_and_load"),
    ("encode: lameenc (Mp3Writer.write)", "Mp3Writer.write"),
    ("mixer: limiter (_limit)", "CallMixer._limit"),
    ("mixer: emit, window shift (_emit)", "CallMixer._emit"),
    ("decode: G.711 decode_many", "G711Decoder.decode_many"),
    ("decode: G.711 decode_many", "G711Decoder.decode"),
    ("mixer: place/write into window", "CallMixer._place"),
    ("mixer: render (_render_run, _render)", "CallMixer._render_run"),
    ("mixer: render (_render_run, _render)", "CallMixer._render"),
    ("mixer: render (_render_run, _render)", "CallMixer._render_lane_g711"),
    ("timeline: release", "SsrcTimeline.release"),
    ("timeline: release", "SsrcTimeline.next_position"),
    ("mixer: release loop (_release_until)", "CallMixer._release_until"),
    ("timeline: push (incl. _anchor, unwrap)", "SsrcTimeline.push"),
    ("lane: plan, take, settle (whole runs)", "SsrcTimeline.plan"),
    ("lane: plan, take, settle (whole runs)", "SsrcTimeline.settle"),
    ("lane: plan, take, settle (whole runs)", "StreamFeed.feed"),
    ("lane: streams and ticks of a block", "BlockLane._stretch"),
    ("lane: streams and ticks of a block", "BlockLane._block"),
    ("reader: CaptureReader batches (numpy)", "CaptureReader._iter_pcap_blocks"),
    ("mixer: push", "CallMixer.push"),
    ("dispatch: Demux._rtp", "Demux._rtp"),
    ("reader: CaptureReader._iter_pcap", "CaptureReader._iter_pcap"),
    ("dispatch: SIP", "Demux._sip"),
    ("dispatch: Demux.run loop, _advance", "Demux._advance"),
    ("dispatch: Demux.run loop, _advance", "Demux.run"),
    ("mixer: finish", "CallMixer.finish"),
)


def profile(cmd: list[str], cpu: int, raw_path: Path) -> list[tuple[str, float]]:
    """Sample ``cmd`` with py-spy (raw collapsed stacks) and add the samples up by pipeline stage."""
    spy = Path(sys.executable).parent / "py-spy"
    subprocess.run(
        ["taskset", "-c", str(cpu), str(spy), "record", "-r", "250", "--format", "raw", "-o", str(raw_path),
         "--", *cmd], check=True, capture_output=True,
    )
    stages = dict((fn, stage) for stage, fn in PROFILE_STAGES)
    counts: dict[str, int] = {}
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        total += int(n)
        stage = "other (interpreter, typer, exit)"
        for frame in reversed(stack.split(";")):
            name = frame.split(" (", 1)[0]
            if name in stages:
                stage = stages[name]
                break
        counts[stage] = counts.get(stage, 0) + int(n)
    return sorted(((k, 100 * v / max(total, 1)) for k, v in counts.items()), key=lambda kv: -kv[1])


# -- the report -----------------------------------------------------------------------------------------


def kb_per_min(size: int, seconds: float) -> float:
    return size / 1000 / (seconds / 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1.0, help="length of the timed call (default 1)")
    ap.add_argument("--long-hours", type=float, default=8.0, help="length of the RSS call (default 8; 0 skips)")
    ap.add_argument("--short-minutes", type=float, default=20.0,
                    help="also time callrec beside ffmpeg on a call this long, where start-up counts (default 20;"
                         " 0 skips)")
    ap.add_argument("--workdir", type=Path, help="where the captures go (default: a new temporary folder)")
    ap.add_argument("--cpu", type=int, default=0, help="the core every timed command is pinned to (default 0)")
    ap.add_argument("--repeat", type=int, default=1, help="time the 1-call commands this often, keep the best")
    ap.add_argument("--lame-qualities", default="2,5,7,9", help="lame qualities to time alone ('' skips)")
    ap.add_argument("--profile", action="store_true", help="also sample callrec with py-spy, by stage")
    ap.add_argument("--keep", action="store_true", help="keep the captures, raw streams and MP3s")
    ap.add_argument("--srtp", action="store_true",
                    help="also time the same call as SDES-SRTP (AES_CM_128_HMAC_SHA1_80) beside plain RTP")
    args = ap.parse_args()
    if not shutil.which("ffmpeg") or not shutil.which("ffprobe"):
        sys.exit("ffmpeg and ffprobe are needed")
    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="callrec-bench-")) if own_dir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    try:
        report(args, workdir, made)
    finally:
        if args.keep:
            print(f"\nkept in {workdir}")
        else:
            for p in made:
                p.unlink(missing_ok=True)
            if own_dir:
                shutil.rmtree(workdir, ignore_errors=True)


def report(args: argparse.Namespace, workdir: Path, made: list[Path]) -> None:
    loops = (voice_loop(1), voice_loop(2))
    pin = ["taskset", "-c", str(args.cpu)]
    lines: list[str] = []
    commands: list[str] = []

    t0 = time.perf_counter()
    cap = write_capture(workdir, args.hours, loops, "call")
    made += [cap.path, cap.raw_a, cap.raw_b]
    print(f"generated {cap.path} ({cap.bytes / 1e6:.0f} MB, 2 x {cap.packets} RTP packets) "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)

    # callrec the whole way (capture -> stereo MP3) beside ffmpeg on the raw streams (decode + encode only)
    outs = {name: workdir / name for name in ("callrec.mp3", "ffmpeg.mp3", "ffmpeg-q7.mp3")}
    made += outs.values()
    cmds = [
        callrec_cmd(cap.path, outs["callrec.mp3"]),
        ffmpeg_cmd(cap.raw_a, cap.raw_b, outs["ffmpeg.mp3"]),
        ffmpeg_cmd(cap.raw_a, cap.raw_b, outs["ffmpeg-q7.mp3"], quality=7),
    ]
    commands += [shlex.join(pin + c) for c in cmds]
    ours, theirs, theirs7 = best_of(cmds, args.cpu, args.repeat)
    result = json.loads(ours.stdout.splitlines()[0])

    secs = cap.seconds
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    hdr = f"{'':46s} {'wall s':>8s} {'cpu s':>8s} {'x realtime':>11s} {'peak RSS MB':>12s}"
    lines += [
        f"one {args.hours:g}-hour two-party PCMA call ({secs:.2f} s of audio); every command pinned to core "
        f"{args.cpu}; best of {args.repeat}; load average before: {load}",
        hdr, "-" * len(hdr),
    ]

    def row(name: str, r: Run, seconds: float) -> None:
        lines.append(f"{name:46s} {r.wall_s:8.2f} {r.cpu_s:8.2f} {seconds / r.wall_s:10.0f}x {r.max_rss_mb:12.1f}")

    row("callrec mix (capture -> MP3 16k stereo)", ours, secs)
    row("ffmpeg (2 raw A-law -> MP3 16k), lame default", theirs, secs)
    row("ffmpeg, -compression_level 7 (= callrec's q7)", theirs7, secs)
    lines.append(f"callrec speed / ffmpeg speed: {theirs.wall_s / ours.wall_s:.2f}  (target >= 2.00)   "
                 f"vs ffmpeg at lame q7: {theirs7.wall_s / ours.wall_s:.2f}")

    # the short call: start-up is a larger share of it
    if args.short_minutes > 0:
        short_cap = write_capture(workdir, args.short_minutes / 60, loops, "short")
        made += [short_cap.path, short_cap.raw_a, short_cap.raw_b]
        outs["callrec-short.mp3"] = workdir / "callrec-short.mp3"
        outs["ffmpeg-short.mp3"] = workdir / "ffmpeg-short.mp3"
        scmds = [callrec_cmd(short_cap.path, outs["callrec-short.mp3"]),
                 ffmpeg_cmd(short_cap.raw_a, short_cap.raw_b, outs["ffmpeg-short.mp3"])]
        commands += [shlex.join(pin + c) for c in scmds]
        s_ours, s_theirs = best_of(scmds, args.cpu, args.repeat)
        row(f"callrec mix, {args.short_minutes:g}-minute call", s_ours, short_cap.seconds)
        row(f"ffmpeg, lame default, {args.short_minutes:g}-minute call", s_theirs, short_cap.seconds)
        lines.append(f"callrec speed / ffmpeg speed, {args.short_minutes:g}-minute call: "
                     f"{s_theirs.wall_s / s_ours.wall_s:.2f}  (target >= 2.00)")

    # the long call: callrec's memory must not grow with the call's length
    long_result = None
    if args.long_hours > 0:
        t0 = time.perf_counter()
        long_cap = write_capture(workdir, args.long_hours, loops, "long", raw=False)
        made.append(long_cap.path)
        print(f"generated {long_cap.path} ({long_cap.bytes / 1e6:.0f} MB, 2 x {long_cap.packets} RTP packets) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        outs["callrec-long.mp3"] = workdir / "callrec-long.mp3"
        made.append(outs["callrec-long.mp3"])
        lcmd = callrec_cmd(long_cap.path, outs["callrec-long.mp3"])
        commands.append(shlex.join(pin + lcmd))
        long_run = measure(lcmd, args.cpu)
        long_result = json.loads(long_run.stdout.splitlines()[0])
        row(f"callrec mix, {args.long_hours:g}-hour call", long_run, long_cap.seconds)
        lines.append(
            f"callrec peak RSS: {ours.max_rss_mb:.1f} MB ({args.hours:g} h), {long_run.max_rss_mb:.1f} MB "
            f"({args.long_hours:g} h), growth {long_run.max_rss_mb - ours.max_rss_mb:+.1f} MB  "
            f"(target < 150 MB, the same for both)"
        )

    # SRTP: the same call encrypted, beside the plain one (interleaved): decryption's cost per packet
    if args.srtp:
        t0 = time.perf_counter()
        scap = srtp_capture(cap, workdir, "call-srtp")
        made.append(scap.path)
        print(f"generated {scap.path} ({scap.bytes / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s", flush=True)
        plain_out, srtp_out = workdir / "callrec-plain.mp3", workdir / "callrec-srtp.mp3"
        made += [plain_out, srtp_out]
        pcmds = [callrec_cmd(cap.path, plain_out), callrec_cmd(scap.path, srtp_out)]
        commands += [shlex.join(pin + c) for c in pcmds]
        p_run, s_run = best_of(pcmds, args.cpu, args.repeat)
        row("callrec mix, plain RTP (again, interleaved)", p_run, secs)
        row(f"callrec mix, SRTP {SRTP_SUITE}", s_run, secs)
        n = 2 * cap.packets
        s_json = json.loads(s_run.stdout.splitlines()[0])
        failed = sum(st.get("srtp_auth_failures", 0) + st.get("srtp_undecryptable", 0) for st in s_json["streams"])
        same = plain_out.read_bytes() == srtp_out.read_bytes()
        lines.append(
            f"per RTP packet ({n} packets): plain {p_run.cpu_s / n * 1e6:.2f} us cpu, SRTP "
            f"{s_run.cpu_s / n * 1e6:.2f} us cpu: SRTP costs {(s_run.cpu_s - p_run.cpu_s) / n * 1e6:+.2f} us cpu "
            f"({(s_run.wall_s - p_run.wall_s) / n * 1e6:+.2f} us wall) more; {failed} packets not decrypted; "
            f"same MP3 as plain: {'yes' if same else 'NO'}"
        )

    # the outputs: size and length
    lines += ["", f"{'output':46s} {'bytes':>12s} {'KB/min':>8s} {'ffprobe s':>10s} {'call s':>10s} {'diff s':>7s}"]
    for name, path in outs.items():
        want = (long_cap.seconds if name == "callrec-long.mp3"
                else short_cap.seconds if name.endswith("-short.mp3") else secs)
        size, got = path.stat().st_size, mp3_duration(path)
        verdict = "ok" if abs(got - want) <= 1.0 else "WRONG LENGTH"
        lines.append(f"{name:46s} {size:12d} {kb_per_min(size, want):8.1f} {got:10.2f} {want:10.2f} "
                     f"{got - want:+7.2f} {verdict}")
    lines.append(f"(SPEC: MP3 at 16 kbit/s is {MP3_TARGET_KB_PER_MIN:.0f} KB/min +-5 %)")
    for name, res in (("callrec", result), ("callrec, long call", long_result)):
        if res is not None:
            streams = ", ".join(f"{s['party']} {s['codec']} {s['packets']} packets, {s['lost']} lost"
                                for s in res["streams"])
            lines.append(f"{name} --json: duration_s {res['duration_s']}; {streams}")

    # the encoder's floor: what is left for everything else
    qualities = [int(q) for q in args.lame_qualities.split(",") if q.strip()]
    if qualities:
        blocks = _stereo_pcm(loops)
        lines += ["", f"lame alone, {args.hours:g} h of stereo 8 kHz -> 16 kbit/s CBR, 0.5 s blocks, core {args.cpu}:"]
        for q in qualities:
            s = lameenc_floor(blocks, secs, q, args.cpu)
            lines.append(f"  {f'lameenc {lameenc_version()} q{q} (joint stereo)':58s} {s:6.2f} s {secs / s:6.0f}x")
        libpath = ctypes.util.find_library("mp3lame")
        if libpath:
            lib = ctypes.CDLL(libpath)
            for q, mode, short, label in (
                (7, LAME_JOINT_STEREO, True, "joint stereo"), (7, LAME_STEREO, True, "L/R stereo"),
                (7, LAME_STEREO, False, "L/R stereo, no short blocks"),
            ):
                s = libmp3lame_floor(lib, blocks, secs, q, mode, short, args.cpu)
                lines.append(f"  {f'system {libpath} q{q} ({label})':58s} {s:6.2f} s {secs / s:6.0f}x")

    if args.profile:
        raw = workdir / "profile.txt"
        made.append(raw)
        out = workdir / "profiled.mp3"
        made.append(out)
        lines += ["", f"callrec mix under py-spy (250 Hz), {args.hours:g}-hour call, share of samples by stage:"]
        lines += [f"  {pct:5.1f} %  {stage}" for stage, pct in profile(callrec_cmd(cap.path, out), args.cpu, raw)]

    print()
    print("\n".join(lines))
    print("\ncommands:")
    for c in commands:
        print("  " + c)


def lameenc_version() -> str:
    from importlib.metadata import version

    return version("lameenc")


if __name__ == "__main__":
    main()
