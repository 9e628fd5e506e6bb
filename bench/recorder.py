"""Load the SIPREC recorder (``callrec record``) with N concurrent two-stream calls on 127.0.0.1.

Usage: python bench/recorder.py [--calls 250,500,1000,2000] [--hold-s 20] [--rate 200]
                                [--recorder-cmd CMD | --recorder-cmd stand-in] [--no-tcpdump]
                                [--profile] [--cpu-gen 0] [--cpu-rec 1] [--keep] [--sdp-source actual|elsewhere]

For each N, one run:
  1. start the recorder pinned to core ``--cpu-rec`` and wait for its ``listening on`` line;
  2. ramp up N SIPREC calls at ``--rate`` calls/s over UDP (INVITE with a multipart SDP + RFC 7865
     metadata body, Timer A retransmissions, ACK, ACK again for every retransmitted 200 OK); each answered
     call starts two G.711 streams at 50 packets/s towards the ports of the recorder's answer;
  3. hold every call for ``--hold-s`` seconds of steady state, measuring the recorder's CPU
     (``/proc/PID/stat`` user+sys of it and its children), the generator's own CPU, each core's busy time
     (``/proc/stat``), and the kernel's UDP drop counters (``/proc/net/snmp``, ``/proc/net/softnet_stat``);
  4. BYE every call at ``--rate`` (its media stops just before), SIGTERM the recorder, then read every
     tape (``call.json`` + ``media.pcap`` under DATA/tapes) and count, per stream, the distinct packets
     received against the packets sent. Every packet is identified by its stream's SSRC and its RTP
     timestamp (packet number x 160), so duplicates and misfiled packets (in another call's tape) show.
Each stream's SDP advertises the generator socket it is sent from, so the recorder's source filter takes
every packet on its common path; ``--sdp-source elsewhere`` advertises port 9 instead, so every stream is
latched to its real source (the NAT case). The recorder's own figures (packets recorded, foreign, streams
latched) are read from the file it keeps for /metrics.
With ``--tcpdump`` (the default) the same load is then played again against a stand-in that answers SIP
but never reads its RTP sockets, while ``tcpdump -w`` pinned to the recorder's core writes the same
traffic to one pcap: the raw cost of recording to pcap in C, the reference figure beside the recorder's.

The generator sends from one core in Python: all RTP packets live in one numpy buffer whose sequence and
timestamp fields are patched per tick, and go out through ``sendmmsg(2)`` (ctypes) in batches with a
destination address per message, from a few UDP sockets. A 20 ms tick is cut into ``--slices`` slices,
so each stream sends every 20 ms while the load is spread over the tick.

``--recorder-cmd`` is a template: ``{listen}``, ``{rtp_ports}``, ``{data}`` and ``{callrec}`` are filled
in. ``--recorder-cmd stand-in`` uses this script's own minimal SIPREC answerer (``--stand-in``), which
records every packet into a per-call tape like the real recorder: it proves the generator and the counting.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import json
import os
import random
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PACKETS_PER_S = 50
TICK_S = 1 / PACKETS_PER_S
PAYLOAD_BYTES = 160  # 20 ms of G.711
SAMPLES_PER_PACKET = 160
RTP_BYTES = 12 + PAYLOAD_BYTES
PT_PCMU = 0
STREAMS_PER_CALL = 2
SIP_T1_S = 0.5
SIP_T2_S = 4.0
SIP_TIMEOUT_S = 64 * SIP_T1_S  # Timer B / F
MAX_SENDMMSG = 1024  # UIO_MAXIOV
HOST = "127.0.0.1"
READY_RE = re.compile(r"listening on (\S+)")
SNMP = "/proc/net/snmp"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
DISCARD_PORT = 9  # what --sdp-source elsewhere advertises
STATS_FILE = "recorder-stats.json"  # the recorder's own figures in its data folder (callrec.recorder.recstats)

# the packet buffer: one 172-byte RTP packet per stream slot
RTP_DTYPE = np.dtype([
    ("b0", "u1"), ("b1", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4"), ("payload", "u1", (PAYLOAD_BYTES,)),
])
SOCKADDR_IN = np.dtype([("family", "<u2"), ("port", ">u2"), ("addr", "S4"), ("zero", "S8")])
IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])
MMSGHDR = np.dtype([
    ("name", "<u8"), ("namelen", "<u4"), ("pad0", "<u4"), ("iov", "<u8"), ("iovlen", "<u8"),
    ("control", "<u8"), ("controllen", "<u8"), ("flags", "<i4"), ("pad1", "<i4"), ("msg_len", "<u4"), ("pad2", "<u4"),
])
assert RTP_DTYPE.itemsize == RTP_BYTES and SOCKADDR_IN.itemsize == 16 and MMSGHDR.itemsize == 64

_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


# -- SIP messages -----------------------------------------------------------------------------------------

COMPACT = {"i": "call-id", "m": "contact", "v": "via", "f": "from", "t": "to", "l": "content-length",
           "c": "content-type"}


@dataclass(slots=True)
class SipMessage:
    first: str
    headers: dict[str, list[str]]
    body: bytes

    def get(self, name: str) -> str:
        values = self.headers.get(name)
        return values[0] if values else ""

    @property
    def is_response(self) -> bool:
        return self.first.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        return int(self.first.split(" ", 2)[1])

    @property
    def method(self) -> str:
        return self.first.split(" ", 1)[0]

    @property
    def cseq(self) -> tuple[int, str]:
        number, method = self.get("cseq").split()
        return int(number), method


def parse_sip(data: bytes) -> SipMessage:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        key = COMPACT.get(key, key)
        headers.setdefault(key, []).append(value.strip())
    return SipMessage(lines[0], headers, body)


def sip_response(req: SipMessage, status: str, to_tag: str, extra: str = "", body: bytes = b"",
                 content_type: str = "application/sdp") -> bytes:
    to = req.get("to")
    if ";tag=" not in to:
        to += f";tag={to_tag}"
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {v}" for v in req.headers.get("via", [])]
    lines += [f"From: {req.get('from')}", f"To: {to}", f"Call-ID: {req.get('call-id')}", f"CSeq: {req.get('cseq')}"]
    if extra:
        lines.append(extra)
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def tag_of(header: str) -> str:
    m = re.search(r";tag=([^;>\s]+)", header)
    return m.group(1) if m else ""


def uri_of(header: str) -> str:
    m = re.search(r"<([^>]+)>", header)
    return m.group(1) if m else header.split(";", 1)[0].strip()


def sdp_ports(body: bytes) -> tuple[str, list[int]]:
    """The connection address and the ``m=audio`` ports of an SDP (or of a multipart body holding one)."""
    text = body.decode("utf-8", "replace")
    addr = HOST
    m = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    if m:
        addr = m.group(1)
    return addr, [int(p) for p in re.findall(r"^m=audio (\d+)", text, re.M)]


def siprec_body(call_id: str, ports: list[int], boundary: str, n: int) -> bytes:
    """SDP offer (two sendonly streams labelled 1 and 2) and RFC 7865 metadata: participant k sends stream k."""
    sess = f"{n:08d}"
    sdp = [
        "v=0", f"o=bench {n} 1 IN IP4 {HOST}", "s=callrec bench", f"c=IN IP4 {HOST}", "t=0 0",
    ]
    for label, port in enumerate(ports, 1):
        sdp += [f"m=audio {port} RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
                "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", f"a=label:{label}",
                "a=sendonly"]
    meta = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<recording xmlns="urn:ietf:params:xml:ns:recording:1">',
        "<datamode>complete</datamode>",
        f'<session session_id="s{sess}"><sipSessionID>{call_id}</sipSessionID></session>',
        f'<participant participant_id="pa{sess}"><nameID aor="sip:+1555{n:07d}@bench.example">'
        f'<name xml:lang="en">Caller {n}</name></nameID></participant>',
        f'<participant participant_id="pb{sess}"><nameID aor="sip:{1000 + n % 9000}@pbx.example">'
        f'<name xml:lang="en">Agent {n % 9000}</name></nameID></participant>',
        f'<stream stream_id="sa{sess}" session_id="s{sess}"><label>1</label></stream>',
        f'<stream stream_id="sb{sess}" session_id="s{sess}"><label>2</label></stream>',
        f'<participantsessionassoc participant_id="pa{sess}" session_id="s{sess}"/>',
        f'<participantsessionassoc participant_id="pb{sess}" session_id="s{sess}"/>',
        f'<participantstreamassoc participant_id="pa{sess}"><send>sa{sess}</send><recv>sb{sess}</recv>'
        "</participantstreamassoc>",
        f'<participantstreamassoc participant_id="pb{sess}"><send>sb{sess}</send><recv>sa{sess}</recv>'
        "</participantstreamassoc>",
        "</recording>",
    ]
    parts = [
        f"--{boundary}", "Content-Type: application/sdp", "", "\r\n".join(sdp), "",
        f"--{boundary}", "Content-Type: application/rs-metadata+xml", "Content-Disposition: recording-session", "",
        "\r\n".join(meta), f"--{boundary}--", "",
    ]
    return "\r\n".join(parts).encode()


# -- the generator ----------------------------------------------------------------------------------------

INVITING, ANSWERED, BYEING, DONE, FAILED = range(5)


@dataclass(slots=True)
class Call:
    index: int
    call_id: str
    from_tag: str
    invite: bytes
    state: int = INVITING
    provisional: bool = False
    invite_sent: float = 0.0  # wall clock of the first transmission
    invite_mono: float = 0.0
    answered: float = 0.0  # kernel arrival time of the first 200 OK
    attempts: int = 0
    retransmits: int = 0
    ack: bytes = b""
    bye: bytes = b""
    bye_sent: float = 0.0
    bye_done: float = 0.0
    to_tag: str = ""
    remote_uri: str = ""
    status: int = 0
    error: str = ""


@dataclass(slots=True)
class Media:
    """Every stream slot's packet, destination and counters, laid out for sendmmsg."""

    slots: int
    sockets: list[socket.socket]
    slices: int
    packets: np.ndarray = field(init=False)
    addrs: np.ndarray = field(init=False)
    iov: np.ndarray = field(init=False)
    mmsg: np.ndarray = field(init=False)
    active: np.ndarray = field(init=False)
    k: np.ndarray = field(init=False)  # next packet number
    sent: np.ndarray = field(init=False)
    ts0: np.ndarray = field(init=False)
    seq0: np.ndarray = field(init=False)
    ssrc_base: int = 0
    groups: list[list[tuple[int, np.ndarray]]] = field(init=False)  # per slice: (socket fd, slots)
    send_errors: dict[str, int] = field(default_factory=dict)
    batch: int = 512

    def __post_init__(self) -> None:
        s, rng = self.slots, np.random.default_rng()
        self.packets = np.zeros(s, RTP_DTYPE)
        self.packets["b0"] = 0x80
        self.packets["b1"] = PT_PCMU
        self.ssrc_base = int(rng.integers(1 << 28, 1 << 31))
        self.packets["ssrc"] = self.ssrc_base + np.arange(s)
        self.packets["payload"] = rng.integers(0, 256, (s, PAYLOAD_BYTES), dtype=np.uint8)
        self.ts0 = rng.integers(0, 1 << 32, s, dtype=np.uint64)
        self.seq0 = rng.integers(0, 1 << 16, s, dtype=np.uint64)
        self.addrs = np.zeros(s, SOCKADDR_IN)
        self.addrs["family"] = socket.AF_INET
        self.iov = np.zeros(s, IOVEC)
        self.iov["base"] = self.packets.ctypes.data + np.arange(s, dtype=np.uint64) * RTP_BYTES
        self.iov["len"] = RTP_BYTES
        self.mmsg = np.zeros(s, MMSGHDR)
        self.mmsg["name"] = self.addrs.ctypes.data + np.arange(s, dtype=np.uint64) * SOCKADDR_IN.itemsize
        self.mmsg["namelen"] = SOCKADDR_IN.itemsize
        self.mmsg["iov"] = self.iov.ctypes.data + np.arange(s, dtype=np.uint64) * IOVEC.itemsize
        self.mmsg["iovlen"] = 1
        self.active = np.zeros(s, bool)
        self.k = np.zeros(s, np.uint64)
        self.sent = np.zeros(s, np.int64)
        slot = np.arange(s)
        self.groups = [
            [(sock.fileno(), slot[(slot % self.slices == sl) & ((slot // self.slices) % len(self.sockets) == j)])
             for j, sock in enumerate(self.sockets)]
            for sl in range(self.slices)
        ]

    def source_port(self, slot: int) -> int:
        return int(self.sockets[(slot // self.slices) % len(self.sockets)].getsockname()[1])

    def start(self, slot: int, addr: str, port: int) -> None:
        self.addrs[slot]["port"] = port
        self.addrs[slot]["addr"] = socket.inet_aton(addr)
        self.active[slot] = True

    def send_slice(self, sl: int) -> int:
        """Send one packet for every active stream of slice ``sl``; the number of packets sent."""
        total = 0
        for fd, group in self.groups[sl]:
            idx = group[self.active[group]]
            n = len(idx)
            if not n:
                continue
            k = self.k[idx]
            pk = self.packets
            pk["seq"][idx] = (self.seq0[idx] + k) & 0xFFFF
            pk["ts"][idx] = (self.ts0[idx] + k * SAMPLES_PER_PACKET) & 0xFFFFFFFF
            pk["b1"][idx] = np.where(k == 0, 0x80 | PT_PCMU, PT_PCMU)
            self.k[idx] = k + 1
            mm = self.mmsg[idx]  # a contiguous copy: the messages of this batch
            base, off = mm.ctypes.data, 0
            while off < n:
                count = min(self.batch, n - off)
                r = _sendmmsg(fd, base + off * MMSGHDR.itemsize, count, 0)
                if r < 0:
                    err = os.strerror(ctypes.get_errno())
                    self.send_errors[err] = self.send_errors.get(err, 0) + 1
                    off += 1  # that message is lost; its packet number is skipped, not counted as sent
                    continue
                self.sent[idx[off : off + r]] += 1
                off += r
                total += r
        return total


@dataclass(slots=True)
class Counters:
    """Kernel and process counters at one moment."""

    wall: float
    rec_ticks: int
    gen_cpu: float
    cores: dict[int, tuple[int, int]]  # cpu -> (busy, total) jiffies
    udp: dict[str, int]
    softnet_drops: int
    sent: int


def proc_tree_ticks(pid: int) -> int:
    """utime+stime (clock ticks) of ``pid`` and every descendant still alive."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, total, changed = {pid}, 0, True
    while changed:
        changed = False
        for p, (pp, _) in stats.items():
            if pp in tree and p not in tree:
                tree.add(p)
                changed = True
    for p in tree:
        total += stats.get(p, (0, 0))[1]
    return total


def core_times() -> dict[int, tuple[int, int]]:
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                idle = v[3] + v[4]
                out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def udp_counters() -> dict[str, int]:
    with open(SNMP) as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], (int(x) for x in rows[1][1:]), strict=True))


def socket_drops(sip_port: int, rtp: tuple[int, int]) -> tuple[int, int]:
    """Drops counted on the recorder's SIP socket and on its RTP/RTCP sockets (``/proc/net/udp``)."""
    sip = media = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port == sip_port:
                sip += int(fields[-1])
            elif rtp[0] <= port <= rtp[1] + 1:
                media += int(fields[-1])
    return sip, media


def softnet_drops() -> int:
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f)


def snapshot(rec_pid: int, media: Media) -> Counters:
    return Counters(time.monotonic(), proc_tree_ticks(rec_pid), time.process_time(), core_times(),
                    udp_counters(), softnet_drops(), int(media.sent.sum()))


@dataclass(slots=True)
class Window:
    seconds: float
    rec_cpu_pct: float
    gen_cpu_pct: float
    cores_pct: dict[int, float]
    udp: dict[str, int]
    softnet_drops: int
    pps: float


def window(a: Counters, b: Counters) -> Window:
    dt = max(b.wall - a.wall, 1e-9)
    cores = {c: 100 * (b.cores[c][0] - a.cores[c][0]) / max(b.cores[c][1] - a.cores[c][1], 1) for c in b.cores}
    return Window(dt, 100 * (b.rec_ticks - a.rec_ticks) / CLK_TCK / dt, 100 * (b.gen_cpu - a.gen_cpu) / dt, cores,
                  {k: b.udp[k] - a.udp.get(k, 0) for k in b.udp}, b.softnet_drops - a.softnet_drops,
                  (b.sent - a.sent) / dt)


class Generator:
    """One load run: SIP over UDP and the RTP of ``n_calls`` calls, in one single-threaded loop."""

    def __init__(self, args: argparse.Namespace, n_calls: int, target: tuple[str, int], rec_pid: int) -> None:
        self.args, self.n, self.target, self.rec_pid = args, n_calls, target, rec_pid
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind((HOST, 0))
        self.sip.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sip.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sip.setblocking(False)
        self.sip_port = self.sip.getsockname()[1]
        socks = []
        for _ in range(args.sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            s.bind((HOST, 0))
            socks.append(s)
        self.media = Media(n_calls * STREAMS_PER_CALL, socks, args.slices)
        self.media.batch = args.batch
        run = f"{random.getrandbits(32):08x}"
        self.calls: list[Call] = []
        self.by_id: dict[str, Call] = {}
        for i in range(n_calls):
            cid = f"bench-{run}-{i}@{HOST}"
            call = Call(i, cid, f"t{run}{i}", b"")
            call.invite = self._invite(call)
            self.calls.append(call)
            self.by_id[cid] = call
        self.timers: list[tuple[float, int, int, int]] = []  # (due, seq, call index, attempt)
        self._tseq = 0
        self.late_slices = 0
        self.max_late_s = 0.0
        self.stray: dict[str, int] = {}
        first, last = (int(x) for x in args.rtp_ports.split("-"))
        self.rtp_range = (first, last)
        self.drops_in_hold = self.drops_at_end = (0, 0)

    # messages
    def _invite(self, call: Call) -> bytes:
        ports = [self.media.source_port(STREAMS_PER_CALL * call.index + j) for j in range(STREAMS_PER_CALL)]
        if self.args.sdp_source == "elsewhere":
            ports = [DISCARD_PORT] * STREAMS_PER_CALL  # nothing comes from there: every stream is latched
        body = siprec_body(call.call_id, ports, "bench-boundary", call.index)
        th, tp = self.target
        lines = [
            f"INVITE sip:srs@{th}:{tp} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{self.sip_port};branch=z9hG4bK-i{call.from_tag};rport",
            "Max-Forwards: 70",
            f"From: <sip:src@{HOST}>;tag={call.from_tag}",
            f"To: <sip:srs@{th}>",
            f"Call-ID: {call.call_id}",
            "CSeq: 1 INVITE",
            f"Contact: <sip:src@{HOST}:{self.sip_port}>;+sip.src",
            "Require: siprec",
            "Supported: replaces",
            "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE",
            "Accept: application/sdp, application/rs-metadata+xml",
            "Content-Type: multipart/mixed;boundary=bench-boundary",
            f"Content-Length: {len(body)}",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    def _in_dialog(self, call: Call, method: str, cseq: int, branch: str) -> bytes:
        th = self.target[0]
        lines = [
            f"{method} {call.remote_uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {HOST}:{self.sip_port};branch=z9hG4bK-{branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:src@{HOST}>;tag={call.from_tag}",
            f"To: <sip:srs@{th}>;tag={call.to_tag}",
            f"Call-ID: {call.call_id}",
            f"CSeq: {cseq} {method}",
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _send(self, data: bytes) -> None:
        try:
            self.sip.sendto(data, self.target)
        except OSError as exc:
            self.stray[f"SIP send: {exc.strerror}"] = self.stray.get(f"SIP send: {exc.strerror}", 0) + 1

    def _timer(self, due: float, call: Call) -> None:
        self._tseq += 1
        heapq.heappush(self.timers, (due, self._tseq, call.index, call.attempts))

    def send_invite(self, call: Call) -> None:
        call.invite_sent = time.time()
        call.attempts = 1
        call.invite_mono = time.monotonic()
        self._send(call.invite)

    def send_bye(self, call: Call) -> None:
        for j in range(STREAMS_PER_CALL):
            self.media.active[STREAMS_PER_CALL * call.index + j] = False
        if call.state != ANSWERED:
            return
        call.state = BYEING
        call.bye = self._in_dialog(call, "BYE", 2, f"b{call.from_tag}")
        call.bye_sent = time.time()
        call.attempts = 1
        self._send(call.bye)
        self._timer(time.monotonic() + SIP_T1_S, call)

    def on_timer(self, index: int, attempt: int, now: float) -> None:
        call = self.calls[index]
        if call.attempts != attempt:
            return
        if call.state == INVITING:
            if now - call.invite_mono >= SIP_TIMEOUT_S:
                call.state, call.error = FAILED, "INVITE timed out"
                return
            if not call.provisional:  # Timer A stops at a provisional response
                self._send(call.invite)
                call.retransmits += 1
            call.attempts += 1
            interval = SIP_T1_S * 2 ** (call.attempts - 1) if not call.provisional else SIP_T2_S
            self._timer(now + min(interval, SIP_TIMEOUT_S), call)
        elif call.state == BYEING:
            if time.time() - call.bye_sent >= SIP_TIMEOUT_S:
                call.state, call.error = DONE, "BYE timed out"
                return
            self._send(call.bye)
            call.retransmits += 1
            call.attempts += 1
            self._timer(now + min(SIP_T1_S * 2 ** (call.attempts - 1), SIP_T2_S), call)

    def on_sip(self, data: bytes, arrival: float, src: tuple[str, int]) -> None:
        try:
            msg = parse_sip(data)
            call = self.by_id.get(msg.get("call-id"))
            if not msg.is_response:
                # a request from the recorder (OPTIONS, BYE): answer 200 and keep going
                self.sip.sendto(sip_response(msg, "200 OK", "gen"), src)
                key = f"request {msg.method}"
                self.stray[key] = self.stray.get(key, 0) + 1
                if call is not None and msg.method == "BYE":
                    for j in range(STREAMS_PER_CALL):
                        self.media.active[STREAMS_PER_CALL * call.index + j] = False
                    call.state, call.error = DONE, "BYE from the recorder"
                return
            status, (_, method) = msg.status, msg.cseq
        except (ValueError, IndexError, OSError):
            self.stray["unparsable SIP"] = self.stray.get("unparsable SIP", 0) + 1
            return
        if call is None:
            self.stray["response to an unknown call"] = self.stray.get("response to an unknown call", 0) + 1
            return
        if method == "INVITE":
            if status < 200:
                call.provisional = True
            elif status < 300:
                if call.state == INVITING:
                    call.answered = arrival
                    call.status = status
                    call.to_tag = tag_of(msg.get("to"))
                    call.remote_uri = uri_of(msg.get("contact")) or f"sip:srs@{self.target[0]}:{self.target[1]}"
                    call.ack = self._in_dialog(call, "ACK", 1, f"a{call.from_tag}")
                    addr, ports = sdp_ports(msg.body)
                    if len(ports) < STREAMS_PER_CALL or 0 in ports[:STREAMS_PER_CALL]:
                        call.state, call.error = FAILED, f"answer has ports {ports}"
                    else:
                        call.state = ANSWERED
                        for j in range(STREAMS_PER_CALL):
                            self.media.start(STREAMS_PER_CALL * call.index + j, addr, ports[j])
                    call.attempts += 1  # cancels the INVITE timers
                if call.ack:
                    self._send(call.ack)  # and again for every retransmitted 200 OK
            elif call.state == INVITING:
                call.status, call.state, call.error = status, FAILED, msg.first
                call.attempts += 1
                th = self.target[0]
                ack = [
                    f"ACK sip:srs@{th}:{self.target[1]} SIP/2.0",
                    f"Via: SIP/2.0/UDP {HOST}:{self.sip_port};branch=z9hG4bK-i{call.from_tag};rport",
                    "Max-Forwards: 70", f"From: <sip:src@{HOST}>;tag={call.from_tag}", f"To: {msg.get('to')}",
                    f"Call-ID: {call.call_id}", "CSeq: 1 ACK", "Content-Length: 0",
                ]
                self._send(("\r\n".join(ack) + "\r\n\r\n").encode())
        elif method == "BYE" and status >= 200 and call.state == BYEING:
            call.state = DONE
            call.bye_done = arrival
            call.attempts += 1
            if status >= 300:
                call.error = f"BYE: {msg.first}"

    def drain_sip(self) -> None:
        while True:
            try:
                data, anc, _flags, src = self.sip.recvmsg(65535, 64)
            except BlockingIOError:
                return
            arrival = time.time()
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack_from("qq", cdata)
                    arrival = sec + nsec / 1e9
            self.on_sip(data, arrival, src)

    def run(self, on_steady: list) -> dict[str, object]:  # type: ignore[type-arg]
        """The whole run: ramp up, hold, BYE; returns the measurements."""
        args, media = self.args, self.media
        slice_s = TICK_S / args.slices
        poll = select.poll()
        poll.register(self.sip.fileno(), select.POLLIN)
        t0 = time.monotonic()
        first = snapshot(self.rec_pid, media)
        next_slice, slice_no = t0, 0
        next_invite, invited = t0, 0
        steady_start: Counters | None = None
        steady_end: Counters | None = None
        hold_until = bye_from = 0.0
        byes = 0
        phase = "ramp"
        while True:
            now = time.monotonic()
            # media first: it is the clock everything else hangs on; at most one tick's worth before
            # signalling gets its turn, so a generator that falls behind still answers and ends the phases
            for _ in range(args.slices):
                if now < next_slice:
                    break
                late = now - next_slice
                if late > slice_s:
                    self.late_slices += 1
                self.max_late_s = max(self.max_late_s, late)
                media.send_slice(slice_no % args.slices)
                slice_no += 1
                next_slice = t0 + slice_no * slice_s
                now = time.monotonic()
            self.drain_sip()
            now = time.monotonic()
            while invited < self.n and now >= next_invite:
                call = self.calls[invited]
                self.send_invite(call)
                self._timer(now + SIP_T1_S, call)
                invited += 1
                next_invite = t0 + invited / args.rate
            while self.timers and self.timers[0][0] <= now:
                _, _, index, attempt = heapq.heappop(self.timers)
                self.on_timer(index, attempt, now)
            if phase == "ramp" and invited == self.n and all(c.state != INVITING for c in self.calls):
                phase = "settle"
                hold_until = now + args.settle_s
            elif phase == "settle" and now >= hold_until:
                phase, steady_start = "hold", snapshot(self.rec_pid, media)
                for hook in on_steady:
                    hook()
                hold_until = now + args.hold_s
            elif phase == "hold" and now >= hold_until:
                steady_end = snapshot(self.rec_pid, media)
                self.drops_in_hold = socket_drops(self.target[1], self.rtp_range)
                phase, bye_from = "bye", now
            elif phase == "bye":
                while byes < self.n and now >= bye_from + byes / args.rate:
                    self.send_bye(self.calls[byes])
                    byes += 1
                if byes == self.n and all(c.state in (DONE, FAILED) for c in self.calls):
                    break
            timeout = next_slice - time.monotonic()
            if invited < self.n:
                timeout = min(timeout, next_invite - time.monotonic())
            if timeout > 0:
                poll.poll(timeout * 1000)
        last = snapshot(self.rec_pid, media)
        self.drops_at_end = socket_drops(self.target[1], self.rtp_range)
        assert steady_start is not None and steady_end is not None
        return {"ramp_s": steady_start.wall - t0 - args.settle_s, "steady": window(steady_start, steady_end),
                "whole": window(first, last)}


# -- reading the tapes -----------------------------------------------------------------------------------

LINK_HEADER = {101: 0, 228: 0, 1: 14, 113: 16, 276: 20, 0: 4}


def rtp_keys(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(ssrc, rtp timestamp, udp dst port) of every IPv4 UDP RTP packet in a classic pcap; and its record count."""
    raw = np.fromfile(path, np.uint8)
    empty = np.zeros(0, np.uint32)
    if len(raw) < 24:
        return empty, empty, empty, 0
    magic = int(raw[:4].view("<u4")[0])
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise ValueError(f"{path}: not a little-endian classic pcap")
    linktype = int(raw[20:24].view("<u4")[0]) & 0x0FFFFFFF
    if linktype not in LINK_HEADER:
        raise ValueError(f"{path}: link type {linktype} not handled")
    l2 = LINK_HEADER[linktype]
    body = raw[24:]
    n = len(body)
    if n < 16:
        return empty, empty, empty, 0
    caplen0 = int(body[8:12].view("<u4")[0])
    rec = 16 + caplen0
    if n % rec == 0 and np.all(body.reshape(-1, rec)[:, 8:12].copy().view("<u4") == caplen0):
        starts = np.arange(0, n, rec, dtype=np.int64)
        caplens = np.full(len(starts), caplen0, np.int64)
    else:  # records of different lengths: walk the headers
        offs, lens = [], []
        off, view = 0, memoryview(body)
        unpack = struct.Struct("<8xI4x").unpack_from
        while off + 16 <= n:
            (cl,) = unpack(view, off)
            if off + 16 + cl > n:
                break
            offs.append(off)
            lens.append(cl)
            off += 16 + cl
        starts, caplens = np.array(offs, np.int64), np.array(lens, np.int64)
    records = len(starts)
    ip = starts + 16 + l2
    ok = caplens >= l2 + 20 + 8 + 12
    ip, caplens = ip[ok], caplens[ok]
    vihl = body[ip]
    ihl = (vihl & 0x0F).astype(np.int64) * 4
    ok = ((vihl >> 4) == 4) & (body[ip + 9] == 17) & (caplens >= l2 + ihl + 20)
    ip, ihl = ip[ok], ihl[ok]
    udp = ip + ihl
    rtp = udp + 8
    ok = (body[rtp] >> 6) == 2
    udp, rtp = udp[ok], rtp[ok]

    def be(at: np.ndarray, size: int) -> np.ndarray:
        v = np.zeros(len(at), np.uint32)
        for i in range(size):
            v = (v << 8) | body[at + i]
        return v

    return be(rtp + 8, 4), be(rtp + 4, 4), be(udp + 2, 2), records


@dataclass(slots=True)
class TapeCount:
    tapes: int = 0
    calls_with_tape: int = 0
    records: int = 0
    rtp: int = 0
    foreign: int = 0  # RTP whose SSRC we never sent
    misfiled: int = 0  # in the tape of another call
    wrong_party: int = 0  # streams whose party in call.json is not the participant sending them
    duplicates: int = 0
    received: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # distinct packets per slot
    problems: list[str] = field(default_factory=list)


def count_tapes(root: Path, media: Media, calls: dict[str, int]) -> TapeCount:
    """Distinct packets per stream slot in every tape (``call.json`` + ``media.pcap``) under ``root``."""
    out = TapeCount(received=np.zeros(media.slots, np.int64))
    keys: list[np.ndarray] = []
    seen_calls: set[int] = set()
    for meta in sorted(root.rglob("call.json")):
        out.tapes += 1
        try:
            info = json.loads(meta.read_text())
            ids = info.get("call_ids") or ([info["call_id"]] if "call_id" in info else [])
        except (OSError, ValueError) as exc:
            out.problems.append(f"{meta}: {exc}")
            continue
        owners = {calls[i] for i in ids if i in calls}
        # which party call.json says sends to each local port (stream j of a call is party "AB"[j])
        party_of = {int(st.get("local_port", 0)): st.get("party", "") for st in info.get("streams", [])}
        seen_calls |= owners
        pcap = meta.parent / "media.pcap"
        if not pcap.exists():
            out.problems.append(f"{meta.parent}: no media.pcap")
            continue
        try:
            ssrc, ts, dport, records = rtp_keys(pcap)
        except ValueError as exc:
            out.problems.append(str(exc))
            continue
        out.records += records
        out.rtp += len(ssrc)
        slot = ssrc.astype(np.int64) - media.ssrc_base
        mine = (slot >= 0) & (slot < media.slots)
        out.foreign += int((~mine).sum())
        slot, ts, dport = slot[mine], ts[mine].astype(np.uint64), dport[mine]
        for port in np.unique(dport):
            want = {"AB"[j] for j in np.unique(slot[dport == port] % STREAMS_PER_CALL)}
            if {party_of.get(int(port), "?")} != want:
                out.wrong_party += 1
        delta = (ts - media.ts0[slot]) & 0xFFFFFFFF
        number = delta // SAMPLES_PER_PACKET
        valid = (delta % SAMPLES_PER_PACKET == 0) & (number < media.k[slot])
        out.foreign += int((~valid).sum())
        slot, number = slot[valid], number[valid].astype(np.int64)
        out.misfiled += int((~np.isin(slot // STREAMS_PER_CALL, list(owners))).sum())
        keys.append(slot << 24 | number)
    out.calls_with_tape = len(seen_calls)
    if keys:
        every = np.concatenate(keys)
        distinct = np.unique(every)
        out.duplicates = len(every) - len(distinct)
        out.received = np.bincount(distinct >> 24, minlength=media.slots)[: media.slots]
    return out


# -- the recorder under test -----------------------------------------------------------------------------


@dataclass(slots=True)
class Recorder:
    proc: subprocess.Popen[bytes]
    log: Path
    data: Path
    listen: tuple[str, int]


def start_recorder(cmd: list[str], cpu: int, log: Path, data: Path, listen: tuple[str, int]) -> Recorder:
    def prepare() -> None:
        os.sched_setaffinity(0, {cpu})
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, preexec_fn=prepare)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if READY_RE.search(text):
            return Recorder(proc, log, data, listen)
        if proc.poll() is not None:
            sys.exit(f"the recorder exited ({proc.returncode}) before listening: {shlex.join(cmd)}\n{text[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"the recorder did not print 'listening on' within 60 s: {shlex.join(cmd)}")


def stop_recorder(rec: Recorder, timeout: float = 300) -> tuple[int | None, float]:
    t0 = time.monotonic()
    rec.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = rec.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rec.proc.kill()
        rec.proc.wait()
        code = None
    return code, time.monotonic() - t0


def profile_hook(args: argparse.Namespace, pid: int, out: Path, procs: list[subprocess.Popen[bytes]]):  # type: ignore[no-untyped-def]
    def start() -> None:
        spy = Path(sys.executable).parent / "py-spy"
        cmd = ["taskset", "-c", str(args.cpu_gen), str(spy), "record", "--pid", str(pid), "--nonblocking",
               "-r", "100", "-d", str(int(args.hold_s)), "--format", "raw", "-o", str(out), "--subprocesses"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return start


def summarize_profile(path: Path, top: int = 18) -> list[str]:
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        for fr in set(frames):
            inclusive[fr] = inclusive.get(fr, 0) + count
    lines = [f"  {total} samples while on CPU (100 Hz)", "  own time (innermost frame):"]
    lines += [f"    {100 * v / max(total, 1):5.1f} %  {k}" for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("  inclusive (frame anywhere on the stack):")
    lines += [f"    {100 * v / max(total, 1):5.1f} %  {k}"
              for k, v in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]]
    return lines


# -- one N ------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def recorder_figures(data: Path) -> dict[str, int]:
    """The recorder's own counters as it wrote them for /metrics at its exit (empty for the stand-in)."""
    try:
        found = json.loads((data / STATS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k.removeprefix("callrec_recorder_"): v for k, v in found.items()} if isinstance(found, dict) else {}


def recorder_cmd(args: argparse.Namespace, listen: tuple[str, int], data: Path, sink: bool = False) -> list[str]:
    fill = {"listen": f"{listen[0]}:{listen[1]}", "rtp_ports": args.rtp_ports, "data": str(data),
            "callrec": str(Path(sys.executable).parent / "callrec")}
    if args.recorder_cmd == "stand-in" or sink:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stand-in", "--listen", fill["listen"],
               "--rtp-ports", args.rtp_ports, "--data", str(data)]
        return cmd + (["--sink"] if sink else [])
    return [part.format(**fill) for part in shlex.split(args.recorder_cmd)]


def wait_quiet(limit_s: float, busy_pct: float = 20.0) -> str:
    """Wait (up to ``limit_s``) for a 2-second window in which no core is over ``busy_pct`` busy."""
    t0 = time.monotonic()
    while True:
        a = core_times()
        time.sleep(2)
        b = core_times()
        busy = {c: 100 * (b[c][0] - a[c][0]) / max(b[c][1] - a[c][1], 1) for c in b}
        text = ", ".join(f"cpu{c} {v:.0f} %" for c, v in sorted(busy.items()))
        waited = time.monotonic() - t0
        if max(busy.values()) <= busy_pct:
            return f"quiet after {waited:.0f} s ({text})"
        if waited >= limit_s:
            return f"NOT QUIET after {waited:.0f} s ({text})"


def run_one(args: argparse.Namespace, n: int, workdir: Path) -> dict[str, object]:
    """Load the recorder with ``n`` calls; everything measured, as a dict for the report."""
    quiet = wait_quiet(args.wait_quiet_s) if args.wait_quiet_s > 0 else "not waited for"
    data = workdir / f"rec-{n}"
    data.mkdir(parents=True, exist_ok=True)
    listen = (HOST, args.sip_port)
    cmd = recorder_cmd(args, listen, data)
    load = os.getloadavg()
    rec = start_recorder(cmd, args.cpu_rec, workdir / f"recorder-{n}.log", data, listen)
    os.sched_setaffinity(0, {args.cpu_gen})
    hooks, spies = [], []  # type: ignore[var-annotated]
    prof = workdir / f"profile-{n}.txt"
    if args.profile:
        hooks.append(profile_hook(args, rec.proc.pid, prof, spies))
    try:
        gen = Generator(args, n, listen, rec.proc.pid)
        result = gen.run(hooks)
    finally:
        code, exit_s = stop_recorder(rec)
        for s in spies:
            s.wait()
    counted = count_tapes(data, gen.media, {c.call_id: c.index for c in gen.calls})
    media = gen.media
    sent = media.sent
    missing = np.maximum(sent - counted.received, 0)
    answered = [c for c in gen.calls if c.answered]
    setup_ms = [1000 * (c.answered - c.invite_sent) for c in answered]
    bye_ms = [1000 * (c.bye_done - c.bye_sent) for c in gen.calls if c.bye_done]
    errors: dict[str, int] = {}
    for c in gen.calls:
        if c.error:
            errors[c.error] = errors.get(c.error, 0) + 1
    out = {
        "calls": n, "answered": len(answered), "load": load, "quiet": quiet, "cmd": cmd, "exit_code": code,
        "exit_s": exit_s,
        "sent": int(sent.sum()), "received": int(counted.received.sum()), "missing": int(missing.sum()),
        "streams_missing": int((missing > 0).sum()), "worst_stream_missing": int(missing.max(initial=0)),
        "tape": counted, "setup_ms": setup_ms, "bye_ms": bye_ms, "errors": errors,
        "invite_retransmits": sum(c.retransmits for c in gen.calls), "late_slices": gen.late_slices,
        "max_late_ms": 1000 * gen.max_late_s, "sip_socket_drops": gen.drops_at_end[0],
        "rtp_socket_drops": gen.drops_in_hold[1], "send_errors": dict(media.send_errors), "stray": dict(gen.stray),
        "log_tail": rec.log.read_text(errors="replace")[-1500:], "figures": recorder_figures(data), **result,
    }
    if args.profile and prof.exists():
        out["profile"] = summarize_profile(prof)
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
    for s in gen.media.sockets + [gen.sip]:
        s.close()
    return out


def run_tcpdump(args: argparse.Namespace, n: int, workdir: Path) -> dict[str, object]:
    """The same load against a non-reading stand-in while ``tcpdump -w`` records it on the recorder's core."""
    quiet = wait_quiet(args.wait_quiet_s) if args.wait_quiet_s > 0 else "not waited for"
    data = workdir / f"sink-{n}"
    data.mkdir(parents=True, exist_ok=True)
    listen = (HOST, args.sip_port)
    rec = start_recorder(recorder_cmd(args, listen, data, sink=True), args.cpu_rec, workdir / f"sink-{n}.log",
                         data, listen)
    pcap = workdir / f"tcpdump-{n}.pcap"
    first, last = args.rtp_ports.split("-")
    tcpdump_cmd = ["tcpdump", "-i", "lo", "-n", "-q", "-B", "32768", "-w", str(pcap),
                   f"udp and dst portrange {first}-{last}"]
    log = workdir / f"tcpdump-{n}.log"
    with open(log, "wb") as f:
        dump = subprocess.Popen(tcpdump_cmd, stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: os.sched_setaffinity(0, {args.cpu_rec}))
    deadline = time.monotonic() + 10
    while "listening on" not in log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.sched_setaffinity(0, {args.cpu_gen})
    try:
        gen = Generator(args, n, listen, dump.pid)
        result = gen.run([])
    finally:
        stop_recorder(rec)
        time.sleep(2)  # tcpdump's ring hands over a block after 1 s: let the last one through
        dump.send_signal(signal.SIGINT)
        dump.wait(60)
    ssrc, ts, _dport, records = rtp_keys(pcap)
    media = gen.media
    slot = ssrc.astype(np.int64) - media.ssrc_base
    mine = (slot >= 0) & (slot < media.slots)
    slot, ts64 = slot[mine], ts[mine].astype(np.uint64)
    number = (((ts64 - media.ts0[slot]) & 0xFFFFFFFF) // SAMPLES_PER_PACKET).astype(np.int64)
    got = len(np.unique(slot << 24 | number))
    text = log.read_text(errors="replace")
    m = re.search(r"(\d+) packets? dropped by kernel", text)
    out = {"cmd": tcpdump_cmd, "quiet": quiet, "sent": int(media.sent.sum()), "captured": got, "records": records,
           "kernel_dropped": int(m.group(1)) if m else -1, "bytes": pcap.stat().st_size, **result}
    if not args.keep:
        pcap.unlink(missing_ok=True)
        shutil.rmtree(data, ignore_errors=True)
    for s in gen.media.sockets + [gen.sip]:
        s.close()
    return out


# -- the stand-in recorder ------------------------------------------------------------------------------


class StandIn:
    """A minimal SIPREC answerer over UDP: one RTP socket per offered stream, every packet into the call's tape.

    Enough to prove the generator and the counting; it is not the product. ``--sink`` binds the RTP ports
    but never reads them (for the tcpdump reference run).
    """

    REC = struct.Struct("<IIII")
    IP_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")

    def __init__(self, listen: tuple[str, int], ports: tuple[int, int], data: Path, sink: bool) -> None:
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sip.bind(listen)
        self.sip.setblocking(False)
        self.ports = list(range(ports[0], ports[1] + 1, 2))
        self.tapes = data / "tapes"
        self.tapes.mkdir(parents=True, exist_ok=True)
        self.sink = sink
        self.ep = select.epoll()
        self.ep.register(self.sip.fileno(), select.EPOLLIN)
        self.calls: dict[str, dict] = {}  # type: ignore[type-arg]
        self.fds: dict[int, tuple[socket.socket, list[bytes], dict[tuple[str, int], bytes], int]] = {}
        self.stop = False

    def _ip_udp(self, src: tuple[str, int], dport: int, size: int) -> bytes:
        total = 28 + size
        s, d = socket.inet_aton(src[0]), socket.inet_aton(HOST)
        words = 0x4500 + total + 0x4000 + 0x4011 + sum(struct.unpack("!4H", s + d))
        while words > 0xFFFF:
            words = (words & 0xFFFF) + (words >> 16)
        return self.REC.pack(0, 0, total, total)[8:] + self.IP_UDP.pack(
            0x45, 0, total, 0, 0x4000, 64, 17, 0xFFFF - words, s, d, src[1], dport, 8 + size, 0)

    def on_sip(self, data: bytes, src: tuple[str, int]) -> None:
        msg = parse_sip(data)
        cid = msg.get("call-id")
        if msg.is_response:
            return
        if msg.method == "INVITE":
            call = self.calls.get(cid)
            if call is None or call["cseq"] != msg.get("cseq"):
                call = call or self._open(cid, len(sdp_ports(msg.body)[1]))
                call["cseq"] = msg.get("cseq")
                sdp = ["v=0", f"o=standin 1 1 IN IP4 {HOST}", "s=-", f"c=IN IP4 {HOST}", "t=0 0"]
                for port in call["ports"]:
                    sdp += [f"m=audio {port} RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
                            "a=rtpmap:101 telephone-event/8000", "a=recvonly"]
                body = ("\r\n".join(sdp) + "\r\n").encode()
                call["answer"] = sip_response(msg, "200 OK", "standin", f"Contact: <sip:srs@{HOST}:"
                                              f"{self.sip.getsockname()[1]}>", body)
            self.sip.sendto(call["answer"], src)
        elif msg.method == "ACK":
            return
        else:
            self.sip.sendto(sip_response(msg, "200 OK", "standin"), src)
            if msg.method == "BYE" and cid in self.calls:
                self._close(self.calls.pop(cid))

    def _drain(self, sock: socket.socket) -> None:
        """Read what is still queued on a stream's socket (the last packets may be behind the BYE)."""
        _, chunks, heads, port = self.fds[sock.fileno()]
        now = time.time()
        ts = struct.pack("<II", int(now), int((now % 1) * 1e6))
        while True:
            try:
                data, src = sock.recvfrom(2048)
            except BlockingIOError:
                return
            head = heads.get(src)
            if head is None or len(data) != RTP_BYTES:
                head = heads[src] = self._ip_udp(src, port, len(data))
            chunks += (ts, head, data)

    def _open(self, cid: str, streams: int) -> dict:  # type: ignore[type-arg]
        folder = self.tapes / re.sub(r"[^A-Za-z0-9._-]", "_", cid)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "call.json").write_text(json.dumps({"call_ids": [cid], "source": "siprec"}))
        f = open(folder / "media.pcap", "wb")  # noqa: SIM115 - closed in _close
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 101))
        socks, chunks = [], []  # type: ignore[var-annotated]
        ports = []
        for _ in range(streams):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if self.sink:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            while True:  # a port someone else holds is skipped
                port = self.ports.pop(0)
                try:
                    s.bind((HOST, port))
                    break
                except OSError:
                    continue
            s.setblocking(False)
            if not self.sink:
                self.ep.register(s.fileno(), select.EPOLLIN)
                self.fds[s.fileno()] = (s, chunks, {}, port)
            socks.append(s)
            ports.append(port)
        call = {"folder": folder, "file": f, "socks": socks, "chunks": chunks, "ports": ports}
        self.calls[cid] = call
        return call

    def _close(self, call: dict) -> None:  # type: ignore[type-arg]
        if not self.sink:
            for s in call["socks"]:
                self._drain(s)
        self._flush(call)
        call["file"].close()
        for s in call["socks"]:
            if not self.sink:
                self.ep.unregister(s.fileno())
                del self.fds[s.fileno()]
            s.close()
        self.ports += call["ports"]

    @staticmethod
    def _flush(call: dict) -> None:  # type: ignore[type-arg]
        if call["chunks"]:
            call["file"].write(b"".join(call["chunks"]))
            call["chunks"].clear()

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stop", True))
        h, p = self.sip.getsockname()
        print(f"callrec record: listening on {h}:{p} (udp), rtp ports {self.ports[0]}-{self.ports[-1] + 1}, "
              f"tapes under {self.tapes}", file=sys.stderr, flush=True)
        sipfd, fds = self.sip.fileno(), self.fds
        pack_ts = struct.Struct("<II").pack
        next_flush = time.monotonic() + 1
        while not self.stop:
            events = self.ep.poll(0.2, 65536)
            now = time.time()
            ts = pack_ts(int(now), int((now % 1) * 1e6))
            for fd, _ev in events:
                entry = fds.get(fd)
                if entry is None:
                    if fd == sipfd:
                        while True:
                            try:
                                data, src = self.sip.recvfrom(65535)
                            except BlockingIOError:
                                break
                            self.on_sip(data, src)
                    continue
                sock, chunks, heads, port = entry
                try:
                    data, src = sock.recvfrom(2048)
                except BlockingIOError:
                    continue
                head = heads.get(src)
                if head is None or len(data) != RTP_BYTES:
                    head = heads[src] = self._ip_udp(src, port, len(data))
                chunks += (ts, head, data)
            if time.monotonic() >= next_flush:
                for call in self.calls.values():
                    self._flush(call)
                next_flush = time.monotonic() + 1
        for call in list(self.calls.values()):
            self._close(call)


def stand_in_main(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    first, last = (int(x) for x in args.rtp_ports.split("-"))
    StandIn((host, int(port)), (first, last), Path(args.data), args.sink).serve()


# -- the report -------------------------------------------------------------------------------------------


def report_one(r: dict[str, object], args: argparse.Namespace) -> list[str]:
    st, wh = r["steady"], r["whole"]
    assert isinstance(st, Window) and isinstance(wh, Window)
    tape = r["tape"]
    assert isinstance(tape, TapeCount)
    setup = r["setup_ms"]
    assert isinstance(setup, list)
    sent, missing = int(r["sent"]), int(r["missing"])  # type: ignore[call-overload]
    load = ", ".join(f"{x:.2f}" for x in r["load"])  # type: ignore[attr-defined]
    lines = [
        f"N = {r['calls']} calls (load average before: {load}; machine {r['quiet']})",
        f"  calls answered {r['answered']}/{r['calls']}, ramp {r['ramp_s']:.1f} s, INVITE/BYE retransmissions "
        f"{r['invite_retransmits']}, errors {r['errors'] or 'none'}",
        f"  set-up INVITE -> 200 OK: p50 {pct(setup, 50):.1f} ms, p95 {pct(setup, 95):.1f} ms, "
        f"max {max(setup, default=float('nan')):.1f} ms;  BYE -> 200: p50 {pct(r['bye_ms'], 50):.1f} ms",  # type: ignore[arg-type]
        f"  steady state {st.seconds:.1f} s at {st.pps:,.0f} packets/s: recorder CPU {st.rec_cpu_pct:.1f} % of one "
        f"core, generator CPU {st.gen_cpu_pct:.1f} %, core busy "
        + ", ".join(f"cpu{c} {v:.0f} %" for c, v in sorted(st.cores_pct.items())),
        f"  not ours in the steady state (other processes, softirq): cpu{args.cpu_gen} "
        f"{st.cores_pct[args.cpu_gen] - st.gen_cpu_pct:.0f} %, cpu{args.cpu_rec} "
        f"{st.cores_pct[args.cpu_rec] - st.rec_cpu_pct:.0f} %",
        f"  whole run {wh.seconds:.1f} s: recorder CPU {wh.rec_cpu_pct:.1f} %, generator {wh.gen_cpu_pct:.1f} %",
        f"  packets: sent {sent:,}, distinct in tapes {int(r['received']):,}, missing {missing:,} "  # type: ignore[call-overload]
        f"({100 * missing / max(sent, 1):.3f} %), streams with loss {r['streams_missing']}, worst stream "
        f"{r['worst_stream_missing']}; duplicates {tape.duplicates}, misfiled {tape.misfiled}, foreign {tape.foreign}, "
        f"streams with the wrong party {tape.wrong_party}",
        f"  tapes {tape.tapes} for {tape.calls_with_tape} calls, {tape.records:,} records; recorder exit "
        f"{r['exit_code']} after SIGTERM in {r['exit_s']:.1f} s",
        f"  kernel over the whole run: Udp RcvbufErrors {wh.udp.get('RcvbufErrors', 0):,}, InErrors "
        f"{wh.udp.get('InErrors', 0):,}, NoPorts {wh.udp.get('NoPorts', 0):,}, SndbufErrors "
        f"{wh.udp.get('SndbufErrors', 0):,}, softnet drops {wh.softnet_drops:,}; on the recorder's sockets "
        f"(/proc/net/udp): SIP {r['sip_socket_drops']:,}, RTP at the end of the hold {r['rtp_socket_drops']:,}",
        f"  generator: slices sent late {r['late_slices']} (worst {r['max_late_ms']:.1f} ms), send errors "
        f"{r['send_errors'] or 'none'}, stray SIP {r['stray'] or 'none'}",
    ]
    target = STREAMS_PER_CALL * PACKETS_PER_S * int(r["answered"])  # type: ignore[call-overload]
    if st.pps < 0.98 * target:
        lines.append(f"  WARNING: the generator sent {st.pps:,.0f} packets/s, under the {target:,} the answered "
                     "calls need: it fell behind (a busy core?), the figures are not at full load")
    figures = r.get("figures")
    if figures:
        lines.append("  the recorder's own figures: " + ", ".join(f"{k} {v:,}" for k, v in sorted(figures.items())))  # type: ignore[attr-defined]
    if tape.problems:
        lines.append(f"  tape problems ({len(tape.problems)}): {tape.problems[:3]}")
    if r["exit_code"] != 0:
        lines.append("  recorder log tail:\n    " + str(r["log_tail"]).replace("\n", "\n    "))
    return lines


def summary_row(r: dict[str, object], ref: dict[str, object] | None) -> str:
    st = r["steady"]
    assert isinstance(st, Window)
    setup = r["setup_ms"]
    sent, missing = int(r["sent"]), int(r["missing"])  # type: ignore[call-overload]
    ref_cpu = "–"
    if ref is not None:
        rst = ref["steady"]
        assert isinstance(rst, Window)
        ref_cpu = f"{rst.rec_cpu_pct:.0f} %"
    return (f"| {r['answered']}/{r['calls']} | {st.pps:,.0f} | {sent:,} | "
            f"{missing:,} ({100 * missing / max(sent, 1):.3f} %) | "
            f"{st.rec_cpu_pct:.0f} % | {ref_cpu} | {st.gen_cpu_pct:.0f} % | "
            f"{pct(setup, 50):.1f} / {pct(setup, 95):.1f} / {max(setup, default=float('nan')):.1f} | "  # type: ignore[arg-type]
            f"{r['sip_socket_drops']:,} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", default="250,500,1000,2000", help="concurrent calls per run, comma-separated")
    ap.add_argument("--hold-s", type=float, default=20.0, help="steady state measured, seconds (default 20)")
    ap.add_argument("--rate", type=float, default=200.0, help="new calls (and BYEs) per second (default 200)")
    ap.add_argument("--settle-s", type=float, default=1.0, help="wait after the last answer before measuring")
    # every call comes from this one SRC: the per-source limit (a quarter of the ports) is lifted
    ap.add_argument("--recorder-cmd", default="{callrec} record --listen {listen} --rtp-ports {rtp_ports} "
                    "--data {data} --max-sessions-per-source 5000",
                    help="the recorder to load ('stand-in': this script's own answerer)")
    ap.add_argument("--sip-port", type=int, default=11060, help="the recorder's SIP port (default 11060)")
    ap.add_argument("--rtp-ports", default="12000-21999", help="the recorder's RTP ports (default 12000-21999)")
    ap.add_argument("--cpu-gen", type=int, default=0, help="core of the generator (default 0)")
    ap.add_argument("--cpu-rec", type=int, default=1, help="core of the recorder and tcpdump (default 1)")
    ap.add_argument("--sockets", type=int, default=4, help="UDP sockets the RTP is sent from (default 4)")
    ap.add_argument("--slices", type=int, default=4, help="slices of each 20 ms tick (default 4)")
    ap.add_argument("--batch", type=int, default=512, help="messages per sendmmsg call (default 512)")
    ap.add_argument("--sdp-source", choices=["actual", "elsewhere"], default="actual",
                    help="what each stream's SDP advertises as its source: the generator's socket (default), or "
                    f"port {DISCARD_PORT}, which never sends (every stream is then latched to its real source)")
    ap.add_argument("--tcpdump", action=argparse.BooleanOptionalAction, default=True,
                    help="also time tcpdump -w recording the same load (default on)")
    ap.add_argument("--profile", action="store_true", help="py-spy the recorder over each steady state")
    ap.add_argument("--wait-quiet-s", type=float, default=180.0,
                    help="before each run, wait up to this long for both cores to be under 20%% busy (0: don't)")
    ap.add_argument("--workdir", type=Path, help="where tapes and logs go (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep tapes, captures and logs")
    # the stand-in recorder (run by the benchmark itself with --recorder-cmd stand-in)
    ap.add_argument("--stand-in", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--listen", default=f"{HOST}:11060", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="./data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stand_in:
        stand_in_main(args)
        return
    if args.tcpdump and not shutil.which("tcpdump"):
        sys.exit("tcpdump is needed (or --no-tcpdump)")
    own_dir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="callrec-bench-rec-")) if own_dir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    lines: list[str] = []
    try:
        for n in (int(x) for x in args.calls.split(",") if x.strip()):
            r = run_one(args, n, workdir)
            part = report_one(r, args)
            ref = None
            if args.tcpdump:
                ref = run_tcpdump(args, n, workdir)
                rst = ref["steady"]
                assert isinstance(rst, Window)
                part.append(
                    f"  reference tcpdump -w (one pcap, core {args.cpu_rec}): CPU {rst.rec_cpu_pct:.1f} % at "
                    f"{rst.pps:,.0f} packets/s; captured {ref['captured']:,} of {ref['sent']:,} sent, kernel "
                    f"dropped {ref['kernel_dropped']}; machine {ref['quiet']}")
            if "profile" in r:
                part += ["  recorder profile over the steady state (py-spy --nonblocking):", *r["profile"]]  # type: ignore[list-item]
            print("\n".join(part), flush=True)
            lines += part
            rows.append(summary_row(r, ref))
            if r["exit_code"] is None:
                break
    finally:
        if args.keep:
            print(f"\nkept in {workdir}")
        elif own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\nfor the README (recorder pinned to one core; generator on the other):")
    print("| calls up | packets/s | sent | missing | recorder CPU | tcpdump -w CPU | generator CPU | "
          "set-up p50 / p95 / max ms | SIP drops |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nrecorder command: " + shlex.join(recorder_cmd(args, (HOST, args.sip_port), Path("DATA"))))
    with contextlib.suppress(Exception):
        print("commit: " + subprocess.run(["git", "log", "-1", "--oneline"], capture_output=True, text=True,
                                          cwd=Path(__file__).parent).stdout.strip())


if __name__ == "__main__":
    main()
