"""The whole live capture (``callrec capture``) recording N concurrent calls, beside ``tcpdump -w`` (issue 16, item 3).

Usage (root): python bench/capture_calls.py [--calls 500,1000] [--seconds 20] [--rate 100] [--cpu-gen 0]
                                            [--cpu-cap 1] [--data-root /var/tmp] [--no-tcpdump] [--profile]

A veth pair joins the root namespace (its end is the interface captured, as a mirror port would be) to a
generator namespace. Two "phones" (addresses nobody has: static neighbour entries give them a foreign MAC,
so the root namespace's IP stack drops their packets, as on a mirror port) talk N calls, set up at
``--rate`` calls/s: for each call the generator sends INVITE with SDP, 200 OK with SDP and ACK over UDP
between the two addresses (port 5060), and from then on both streams of the call at 50 packets/s (172-byte
G.711 RTP, each stream its own SSRC, from and to the ports each side's SDP gave: 2 streams per call, so 1,000
calls = 100,000 packets/s). Once every call is up, ``--seconds`` of steady RTP; then the RTP stops and every
call gets BYE and its 200 OK, at ``--rate``. Every packet (SIP and RTP) is built whole (IPv4 + UDP) in numpy
buffers and sent through a raw socket (IP_HDRINCL) by ``sendmmsg(2)`` from one Python process pinned to
``--cpu-gen``, the RTP's seq (= the 20 ms tick's number) and timestamp patched per tick, each tick cut into
20 slices.

Per N, two runs on the same traffic, each capture alone on ``--cpu-cap``:
  * ``callrec capture --interface IF --data DIR`` (its default filter, ring and tracker); after the BYEs
    and the tracker's end grace it gets SIGTERM; then every tape's ``media.pcap`` is read and its RTP
    packets counted per stream against what was sent (missing must be 0), the kernel's drop counter read
    from ``DATA/capture-stats.json``;
  * ``tcpdump -w DIR/all.pcap`` with the same filter and ring size: the reference (captured, kernel drops).
CPU: the capture process's user+sys time (``/proc/PID/stat``) during the steady RTP and during the ramp (the
generator says when each starts and stops), as a % of one core, and its whole CPU from ready to exit
(``wait4``: set-up of the calls, the BYEs, closing every tape). ``--profile`` runs ``py-spy record`` on
callrec capture (raw format, to DIR/../profile-N.txt).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PACKETS_PER_S = 50
TICK_S = 1 / PACKETS_PER_S
SLICES = 20
PAYLOAD_BYTES = 160
FOREIGN_MAC = "02:00:5e:00:53:01"
PORT_A, PORT_B = 10000, 40000  # first RTP port of each side; call i uses PORT + 2 i
SIP_PORT = 5060
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 30.0
END_GRACE_S = 2.0  # the tracker closes a tape this long after its BYE
TAIL_S = 2.0
ROOT = Path(__file__).resolve().parent.parent
CALLREC = ROOT / ".venv" / "bin" / "callrec"

PACKET = np.dtype([
    ("vihl", "u1"), ("tos", "u1"), ("total", ">u2"), ("id", ">u2"), ("frag", ">u2"), ("ttl", "u1"), ("proto", "u1"),
    ("csum", ">u2"), ("src", "S4"), ("dst", "S4"), ("sport", ">u2"), ("dport", ">u2"), ("ulen", ">u2"),
    ("ucsum", ">u2"), ("b0", "u1"), ("b1", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4"),
    ("payload", "u1", (PAYLOAD_BYTES,)),
])  # fmt: skip
SOCKADDR_IN = np.dtype([("family", "<u2"), ("port", ">u2"), ("addr", "S4"), ("zero", "S8")])
IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])
MMSGHDR = np.dtype([
    ("name", "<u8"), ("namelen", "<u4"), ("pad0", "<u4"), ("iov", "<u8"), ("iovlen", "<u8"),
    ("control", "<u8"), ("controllen", "<u8"), ("flags", "<i4"), ("pad1", "<i4"), ("msg_len", "<u4"), ("pad2", "<u4"),
])  # fmt: skip
assert PACKET.itemsize == 28 + 12 + PAYLOAD_BYTES and MMSGHDR.itemsize == 64


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {(done.stderr or done.stdout).strip()}")


def pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


# -- the generator (inside the generator namespace) ---------------------------------------------------------


class Sender:
    """Whole IPv4/UDP packets through one raw socket, many per ``sendmmsg(2)``."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.sendmmsg = libc.sendmmsg
        self.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        self.sendmmsg.restype = ctypes.c_int
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        self.errors = 0

    def prepare(self, buf: np.ndarray, starts: list[int], sizes: list[int], dsts: list[bytes]) -> np.ndarray:
        n = len(starts)
        addrs = np.zeros(n, SOCKADDR_IN)
        addrs["family"] = socket.AF_INET
        addrs["addr"] = dsts
        iov = np.zeros(n, IOVEC)
        iov["base"] = buf.ctypes.data + np.asarray(starts, np.uint64)
        iov["len"] = sizes
        mmsg = np.zeros(n, MMSGHDR)
        mmsg["name"] = addrs.ctypes.data + np.arange(n, dtype=np.uint64) * SOCKADDR_IN.itemsize
        mmsg["namelen"] = SOCKADDR_IN.itemsize
        mmsg["iov"] = iov.ctypes.data + np.arange(n, dtype=np.uint64) * IOVEC.itemsize
        mmsg["iovlen"] = 1
        self._keep = getattr(self, "_keep", []) + [addrs, iov, buf]
        return mmsg

    def send(self, mmsg: np.ndarray, lo: int, hi: int) -> int:
        sent, fd = 0, self.sock.fileno()
        while lo < hi:
            r = self.sendmmsg(fd, mmsg.ctypes.data + lo * MMSGHDR.itemsize, hi - lo, 0)
            if r <= 0:
                self.errors += 1
                if ctypes.get_errno() == 105:  # ENOBUFS: the queue is full, a moment
                    time.sleep(0.0005)
                    continue
                lo += 1
                continue
            sent += r
            lo += r
        return sent


def udp_packet(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0, src, dst)
    return ip + struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def sip_messages(i: int, a: str, b: str, phase: str) -> list[tuple[bool, bytes]]:
    """The SIP of call ``i`` between phones ``a`` and ``b``: (sent by a?, message) in order."""
    call_id, ftag, ttag = f"bench-{i}@{a}", f"fa{i}", f"tb{i}"

    def sdp(host: str, port: int, sess: int) -> str:
        return (f"v=0\r\no=- {sess} 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")  # fmt: skip

    def msg(
        first: str, via_host: str, branch: str, cseq: str, to_tag: bool, body: str = "", contact: str = ""
    ) -> bytes:
        head = [first, f"Via: SIP/2.0/UDP {via_host}:{SIP_PORT};branch=z9hG4bK{branch}", "Max-Forwards: 70",
                f"From: <sip:a{i}@{a}>;tag={ftag}", f"To: <sip:b{i}@{b}>" + (f";tag={ttag}" if to_tag else ""),
                f"Call-ID: {call_id}", f"CSeq: {cseq}"]  # fmt: skip
        if contact:
            head.append(f"Contact: <sip:{contact}:{SIP_PORT}>")
        if body:
            head.append("Content-Type: application/sdp")
        head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n" + body).encode()

    if phase == "setup":
        return [
            (True, msg(f"INVITE sip:b{i}@{b} SIP/2.0", a, f"i{i}", "1 INVITE", False, sdp(a, PORT_A + 2 * i, i), a)),
            (False, msg("SIP/2.0 200 OK", a, f"i{i}", "1 INVITE", True, sdp(b, PORT_B + 2 * i, i), b)),
            (True, msg(f"ACK sip:b{i}@{b}:{SIP_PORT} SIP/2.0", a, f"k{i}", "1 ACK", True)),
        ]
    return [
        (True, msg(f"BYE sip:b{i}@{b}:{SIP_PORT} SIP/2.0", a, f"b{i}", "2 BYE", True)),
        (False, msg("SIP/2.0 200 OK", a, f"b{i}", "2 BYE", True)),
    ]


def sip_batch(sender: Sender, calls: int, a: str, b: str, phase: str) -> np.ndarray:
    """Every call's messages of ``phase``, call after call, each call's in order: ``per_call`` messages each."""
    pa, pb = socket.inet_aton(a), socket.inet_aton(b)
    packets = []
    for i in range(calls):
        for by_a, text in sip_messages(i, a, b, phase):
            src, dst = (pa, pb) if by_a else (pb, pa)
            packets.append((udp_packet(src, SIP_PORT, dst, SIP_PORT, text), dst))
    buf = np.frombuffer(bytearray(b"".join(p for p, _ in packets)), np.uint8)
    starts = np.cumsum([0] + [len(p) for p, _ in packets[:-1]]).tolist()
    return sender.prepare(buf, starts, [len(p) for p, _ in packets], [d for _, d in packets])


def generate(args: argparse.Namespace) -> None:
    """Calls set up at ``--rate`` calls/s, each call's two streams starting once it is answered; when all are
    up, ``--seconds`` of steady RTP; then the RTP stops and every call is hung up at ``--rate``."""
    calls, a, b = args.calls_n, args.phone_a, args.phone_b
    sender = Sender()
    setup, teardown = sip_batch(sender, calls, a, b, "setup"), sip_batch(sender, calls, a, b, "teardown")
    streams = 2 * calls
    rng = np.random.default_rng()
    pa, pb = socket.inet_aton(a), socket.inet_aton(b)
    packets = np.zeros(streams, PACKET)
    packets["vihl"], packets["ttl"], packets["proto"], packets["frag"] = 0x45, 64, 17, 0x4000
    packets["total"], packets["ulen"] = PACKET.itemsize, PACKET.itemsize - 20
    by_a = np.arange(streams) % 2 == 0  # stream 2i: a -> b of call i; 2i+1: b -> a
    call = np.arange(streams) // 2
    packets["src"] = np.where(by_a, pa, pb)
    packets["dst"] = np.where(by_a, pb, pa)
    packets["sport"] = np.where(by_a, PORT_A, PORT_B) + 2 * call
    packets["dport"] = np.where(by_a, PORT_B, PORT_A) + 2 * call
    packets["b0"] = 0x80
    packets["ssrc"] = rng.integers(1 << 28, 1 << 30) + np.arange(streams)
    packets["payload"] = rng.integers(0, 256, (streams, PAYLOAD_BYTES), dtype=np.uint8)
    buf = packets.view(np.uint8)
    mmsg = sender.prepare(buf, (np.arange(streams) * PACKET.itemsize).tolist(), [PACKET.itemsize] * streams,
                          list(packets["dst"]))  # fmt: skip
    bounds = np.linspace(0, streams, SLICES + 1).astype(int).tolist()
    per_stream = np.zeros(streams, np.int64)
    per_tick: list[int] = []  # RTP packets sent per 20 ms tick (= RTP sequence number)
    sent = sip_sent = late = up = 0
    slice_s = TICK_S / SLICES
    ramp_ticks = int(np.ceil(calls / args.rate / TICK_S))
    ticks = ramp_ticks + int(args.seconds / TICK_S)
    print("ramp-start", flush=True)
    t0 = time.monotonic()
    for n in range(ticks * SLICES):
        due = t0 + n * slice_s
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -slice_s:
            late += 1
        sl = n % SLICES
        if sl == 0:
            k = n // SLICES
            if k == ramp_ticks:
                print("rtp-start", flush=True)
                t1 = time.monotonic()
            packets["seq"] = k & 0xFFFF
            packets["ts"] = (k * PAYLOAD_BYTES) & 0xFFFFFFFF
            per_tick.append(0)
        want = min(calls, int(args.rate * n * slice_s) + 1)
        if want > up:  # INVITE, 200 OK, ACK of the calls due by now
            sip_sent += sender.send(setup, 3 * up, 3 * want)
            up = want
        lo, hi = bounds[sl], min(bounds[sl + 1], 2 * up)
        if hi > lo:
            got = sender.send(mmsg, lo, hi)
            sent += got
            per_tick[-1] += got
            per_stream[lo:hi] += 1
    elapsed = time.monotonic() - t1
    print("rtp-end", flush=True)
    time.sleep(0.2)
    for lo in range(0, calls, max(1, int(args.rate * TICK_S))):  # BYE and its 200 OK at --rate
        hi = min(calls, lo + max(1, int(args.rate * TICK_S)))
        sip_sent += sender.send(teardown, 2 * lo, 2 * hi)
        time.sleep(TICK_S)
    figures = {"rtp_sent": sent, "per_stream": per_stream.tolist(), "per_tick": per_tick, "sip_sent": sip_sent,
               "seconds": elapsed, "ramp_ticks": ramp_ticks, "steady_sent": int(sum(per_tick[ramp_ticks:])),
               "late_slices": late, "errors": sender.errors, "cpu_s": time.process_time()}  # fmt: skip
    print(json.dumps(figures), flush=True)


# -- counting ------------------------------------------------------------------------------------------------


def count_tapes(tapes: Path) -> dict[str, object]:
    """RTP packets per stream (destination port) over every tape's media.pcap (raw IPv4, 16-byte records)."""
    per_port: dict[int, int] = {}
    per_seq: dict[int, int] = {}  # RTP packets on the tapes per sequence number (all streams)
    n_tapes = sip = 0
    for media in tapes.rglob("media.pcap"):
        n_tapes += 1
        data = media.read_bytes()
        at = 24
        while at + 16 <= len(data):
            incl = struct.unpack_from("<I", data, at + 8)[0]
            rec = at + 16
            dport = struct.unpack_from(">H", data, rec + 22)[0]
            if dport == SIP_PORT:
                sip += 1
            else:
                per_port[dport] = per_port.get(dport, 0) + 1
                seq = struct.unpack_from(">H", data, rec + 30)[0]
                per_seq[seq] = per_seq.get(seq, 0) + 1
            at = rec + incl
    return {"tapes": n_tapes, "sip_on_tapes": sip, "per_port": per_port, "per_seq": per_seq}


def ticks_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists() and pattern in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{proc.args!r} never said {pattern!r}: {path.read_text(errors='replace')[-2000:]}")


def one_run(args: argparse.Namespace, kind: str, calls: int, net: dict[str, str], folder: Path) -> dict[str, object]:
    folder.mkdir(parents=True)
    log = folder / "stderr.txt"
    ring_kib = args.block_size * args.block_count // 1024
    bpf = "udp or (tcp port 5060)"
    if kind == "callrec":
        argv = [str(CALLREC), "capture", "--interface", net["interface"], "--data", str(folder / "data"),
                "--log-level", "warning"]  # fmt: skip
        pattern = "callrec capture: reading"
    else:
        argv = ["tcpdump", "-i", net["interface"], "-n", "-q", "-B", str(ring_kib), "-w", str(folder / "all.pcap"), bpf]
        pattern = "listening on"
    load_before = loadavg()
    with open(log, "wb") as err:
        cap = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                               preexec_fn=lambda: pin(args.cpu_cap))  # fmt: skip
    spy = None
    try:
        wait_for(log, pattern, cap)
        if args.profile and kind == "callrec":
            spy = subprocess.Popen([str(ROOT / ".venv/bin/py-spy"), "record", "--nonblocking", "--format", "raw", "-r",
                                    "100", "-p", str(cap.pid), "-o", str(folder.parent / f"profile-{calls}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   preexec_fn=lambda: pin(args.cpu_gen))  # fmt: skip
        me = [sys.executable, str(Path(__file__).resolve())]
        gen = subprocess.Popen(
            ["ip", "netns", "exec", net["netns"], *me, "--generate", "--calls-n", str(calls), "--phone-a", net["a"],
             "--phone-b", net["b"], "--seconds", str(args.seconds), "--rate", str(args.rate)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: pin(args.cpu_gen),
        )  # fmt: skip
        assert gen.stdout is not None
        marks: dict[str, tuple[float, int]] = {}
        last = ""
        for line in gen.stdout:
            line = line.strip()
            if line in ("ramp-start", "rtp-start", "rtp-end"):
                marks[line] = (time.monotonic(), ticks_of(cap.pid))
            elif line:
                last = line
        gen.wait(60)
        if gen.returncode != 0 or not last:
            raise RuntimeError(f"the generator failed: {gen.stderr.read() if gen.stderr else ''}")
        sent = json.loads(last)
        time.sleep(TAIL_S + (END_GRACE_S if kind == "callrec" else 0))
        ticks_end = ticks_of(cap.pid)
        cap.send_signal(signal.SIGTERM if kind == "callrec" else signal.SIGINT)
        _, status, usage = os.wait4(cap.pid, 0)
        cap.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if cap.returncode is None and cap.poll() is None:
            cap.kill()
            cap.wait(30)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    (tr, kr), (t0, k0), (t1, k1) = marks["ramp-start"], marks["rtp-start"], marks["rtp-end"]
    gen_figures = {k: v for k, v in sent.items() if k not in ("per_stream", "per_tick")}
    r: dict[str, object] = {
        "kind": kind, "calls": calls, "rtp_sent": sent["rtp_sent"], "sip_sent": sent["sip_sent"],
        "pps": sent["steady_sent"] / sent["seconds"], "gen": gen_figures,
        "cpu_rtp_pct": 100 * (k1 - k0) / CLK_TCK / (t1 - t0),
        "cpu_ramp_pct": 100 * (k0 - kr) / CLK_TCK / (t0 - tr), "cpu_total_s": usage.ru_utime + usage.ru_stime,
        "cpu_after_rtp_s": (ticks_end - k1) / CLK_TCK, "exit": cap.returncode,
        "load_before": load_before, "load_after": loadavg(),
    }  # fmt: skip
    text = log.read_text(errors="replace")
    if kind == "callrec":
        counted = count_tapes(folder / "data" / "tapes")
        per_port, per_seq = counted.pop("per_port"), counted.pop("per_seq")
        assert isinstance(per_port, dict) and isinstance(per_seq, dict)
        # when the losses were: the 20 ms ticks (RTP sequence numbers) with packets missing, as ranges
        short = [k for k, n in enumerate(sent["per_tick"]) if per_seq.get(k, 0) < n]
        r["missing_ticks"] = _ranges(short)[:20]
        # stream 2i goes to B's port of call i, 2i+1 to A's
        ports = [(PORT_A if s % 2 else PORT_B) + 2 * (s // 2) for s in range(2 * calls)]
        want = sent["per_stream"]
        r["missing"] = sum(max(0, w - per_port.get(p, 0)) for p, w in zip(ports, want, strict=True))
        r["extra"] = sum(max(0, per_port.get(p, 0) - w) for p, w in zip(ports, want, strict=True))
        r["rtp_on_tapes"] = sum(per_port.values())
        r.update(counted)
        stats = json.loads((folder / "data" / "capture-stats.json").read_text())
        r["stats"] = stats
        r["drops"] = _find_drops(stats)
        r["log_tail"] = text[-1500:]
    else:
        got = {k: int(m.group(1)) if (m := re.search(rf"(\d+) packets? {k}", text)) else -1
               for k in ("captured", "received by filter", "dropped by kernel")}  # fmt: skip
        r["captured"] = got["captured"]
        r["missing"] = int(sent["rtp_sent"]) + int(sent["sip_sent"]) - got["captured"]
        r["drops"] = got["dropped by kernel"]
    return r


def _ranges(values: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def _find_drops(stats: object) -> int:
    """The sum of every ``callrec_capture_drops`` in the figures file, wherever it sits."""
    if isinstance(stats, dict):
        return sum(int(v) if k == "callrec_capture_drops" else _find_drops(v) for k, v in stats.items())
    return 0


def make_net() -> dict[str, str]:
    tag = os.urandom(3).hex()
    third = int(tag[:2], 16)
    net = {"netns": f"cc{tag}", "interface": f"cc{tag}a", "peer": f"cc{tag}b", "ip": f"198.19.{third}.1",
           "peer_ip": f"198.19.{third}.2", "a": f"198.19.{third}.20", "b": f"198.19.{third}.30"}  # fmt: skip
    run("ip", "netns", "add", net["netns"])
    run("ip", "link", "add", net["interface"], "type", "veth", "peer", "name", net["peer"], "netns", net["netns"])
    run("ip", "addr", "add", f"{net['ip']}/24", "dev", net["interface"])
    run("ip", "link", "set", net["interface"], "up")
    run("ip", "-n", net["netns"], "addr", "add", f"{net['peer_ip']}/24", "dev", net["peer"])
    run("ip", "-n", net["netns"], "link", "set", net["peer"], "up")
    for phone in (net["a"], net["b"]):
        run("ip", "-n", net["netns"], "neigh", "add", phone, "lladdr", FOREIGN_MAC, "dev", net["peer"], "nud",
            "permanent")  # fmt: skip
    return net


def drop_net(net: dict[str, str]) -> None:
    subprocess.run(["ip", "link", "del", net["interface"]], capture_output=True, timeout=30)
    subprocess.run(["ip", "netns", "del", net["netns"]], capture_output=True, timeout=30)


def row(r: dict[str, object], t: dict[str, object] | None) -> str:
    tcp = f"{t['cpu_rtp_pct']:.0f} % | {t['drops']} | {t['missing']}" if t else "– | – | –"
    return (f"| {r['calls']:,} | {r['pps']:,.0f} | {r['rtp_sent']:,} | {r['missing']:,} | {r['drops']} | "
            f"{r['cpu_rtp_pct']:.0f} % | {r['cpu_ramp_pct']:.0f} % | {r['cpu_total_s']:.1f} | {tcp} | "
            f"{r['load_before']} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", default="500,1000", help="concurrent calls per run, comma-separated (default 500,1000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of steady RTP, all calls up (default 20)")
    ap.add_argument("--rate", type=float, default=100.0, help="calls set up (and hung up) per second (default 100)")
    ap.add_argument("--cpu-gen", type=int, default=0, help="core of the generator (default 0)")
    ap.add_argument("--cpu-cap", type=int, default=1, help="core of the capture under test (default 1)")
    ap.add_argument("--block-size", type=int, default=4 << 20, help="tcpdump -B: as callrec's ring (4 MiB x 32)")
    ap.add_argument("--block-count", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--data-root", default="/var/tmp", help="where the tapes and tcpdump's file go (default /var/tmp)")
    ap.add_argument("--tcpdump", action=argparse.BooleanOptionalAction, default=True, help="the reference run")
    ap.add_argument("--profile", action="store_true", help="py-spy record (raw) on callrec capture")
    ap.add_argument("--keep", action="store_true", help="keep the tapes")
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--calls-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--phone-a", help=argparse.SUPPRESS)
    ap.add_argument("--phone-b", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        return generate(args)
    if os.geteuid() != 0 or not shutil.which("tcpdump") or not shutil.which("ip"):
        sys.exit("bench/capture_calls.py needs root, iproute2 and tcpdump")
    work = Path(tempfile.mkdtemp(prefix="capture-calls-", dir=args.data_root))
    net = make_net()
    rows: list[str] = []
    try:
        for calls in [int(c) for c in args.calls.split(",")]:
            r = one_run(args, "callrec", calls, net, work / f"callrec-{calls}")
            print(json.dumps({k: v for k, v in r.items() if k != "stats"}), flush=True)
            t = one_run(args, "tcpdump", calls, net, work / f"tcpdump-{calls}") if args.tcpdump else None
            if t:
                print(json.dumps(t), flush=True)
            rows.append(row(r, t))
            if not args.keep:
                for sub in work.glob(f"*-{calls}"):
                    shutil.rmtree(sub, ignore_errors=True)
    finally:
        drop_net(net)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ncalls set up and hung up at {args.rate:g}/s, then {args.seconds:g} s of steady RTP per run; generator on "
          f"core {args.cpu_gen}, each capture alone on core {args.cpu_cap}; {os.cpu_count()} cores; tapes and "
          f"tcpdump's file under {args.data_root}")  # fmt: skip
    print("| calls | RTP packets/s (steady) | RTP sent | missing on tapes | kernel drops | callrec capture CPU, "
          "steady | its CPU while calls are set up | its CPU s, start to exit | tcpdump -w CPU, steady | "
          "tcpdump drops | tcpdump missing | load before |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    commit = subprocess.run(["git", "log", "-1", "--oneline"], capture_output=True, text=True, cwd=ROOT)
    print("commit: " + commit.stdout.strip())


if __name__ == "__main__":
    main()
