"""Live capture at RTP rates: callrec's ring reader beside ``tcpdump -w`` on the same traffic (issue 16, item 3).

Usage (root): python bench/capture.py [--pps 100000] [--seconds 10] [--cpu-gen 0] [--cpu-cap 1]
                                      [--block-size 4194304] [--block-count 64] [--no-decode] [--libpcap]
                                      [--nice -10]

A veth pair joins the root namespace (whose end is the interface captured) to a generator namespace. The
generator sends RTP-like UDP (``--pps / 50`` streams of 172-byte G.711 packets at 50 packets/s, each with its
own SSRC and destination port) from one Python process pinned to ``--cpu-gen``: every packet lives in one
numpy buffer whose seq/timestamp fields are patched per slice of the 20 ms tick and sent by ``sendmmsg(2)``
(ctypes), as bench/recorder.py does. The packets go to an address nobody has (a static neighbour entry gives
it a foreign MAC), so the root namespace's IP stack drops them at once, as on a mirror port; capture taps
see them first.

Each capture runs alone on ``--cpu-cap`` while the generator plays ``--seconds`` of traffic:
  * ring: ``callrec.live.ring.RingReader`` (TPACKET_V3, ``--block-size`` x ``--block-count``), every block
    decoded into UdpBlock/Datagram items by ``FrameDecoder`` (``--no-decode``: only counted);
  * tcpdump: ``tcpdump -w /dev/null -B <the same ring size>`` (libpcap's own TPACKET_V3 loop, in C);
  * with ``--libpcap``: libpcap through ctypes (``pcap_dispatch`` with a Python callback per packet that
    copies it), the other way issue 16 offers.
Each gets the same BPF filter (``udp and dst host <target>``). Reported per capture: packets sent, seen,
missing, the kernel's drop counter, the CPU seconds the capture process spent from the moment it was ready
to its exit (``/proc/PID/stat`` then ``wait4``), per 100,000 packets, and the load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

PACKETS_PER_S = 50
TICK_S = 1 / PACKETS_PER_S
SLICES = 20  # one sendmmsg round per millisecond
PAYLOAD_BYTES = 160
RTP_BYTES = 12 + PAYLOAD_BYTES
FIRST_PORT = 20000
FOREIGN_MAC = "02:00:5e:00:53:01"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 20.0
TAIL_S = 1.5  # after the last packet: the ring's and tcpdump's last blocks are handed over
STOP_TIMEOUT_S = 30.0

RTP_DTYPE = np.dtype([("b0", "u1"), ("b1", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4"),
                      ("payload", "u1", (PAYLOAD_BYTES,))])  # fmt: skip
SOCKADDR_IN = np.dtype([("family", "<u2"), ("port", ">u2"), ("addr", "S4"), ("zero", "S8")])
IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])
MMSGHDR = np.dtype([
    ("name", "<u8"), ("namelen", "<u4"), ("pad0", "<u4"), ("iov", "<u8"), ("iovlen", "<u8"),
    ("control", "<u8"), ("controllen", "<u8"), ("flags", "<i4"), ("pad1", "<i4"), ("msg_len", "<u4"), ("pad2", "<u4"),
])  # fmt: skip
assert RTP_DTYPE.itemsize == RTP_BYTES and SOCKADDR_IN.itemsize == 16 and MMSGHDR.itemsize == 64


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {(done.stderr or done.stdout).strip()}")


def pin(cpu: int, nice: int = 0) -> None:
    os.sched_setaffinity(0, {cpu})
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


# -- the generator (run inside the generator namespace) -----------------------------------------------------


def generate(args: argparse.Namespace) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    sendmmsg = libc.sendmmsg
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    streams = max(SLICES, args.pps // PACKETS_PER_S)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    rng = np.random.default_rng()
    packets = np.zeros(streams, RTP_DTYPE)
    packets["b0"] = 0x80
    packets["ssrc"] = rng.integers(1 << 28, 1 << 31) + np.arange(streams)
    packets["payload"] = rng.integers(0, 256, (streams, PAYLOAD_BYTES), dtype=np.uint8)
    addrs = np.zeros(streams, SOCKADDR_IN)
    addrs["family"] = socket.AF_INET
    addrs["port"] = FIRST_PORT + 2 * np.arange(streams) % 20000
    addrs["addr"] = socket.inet_aton(args.target)
    iov = np.zeros(streams, IOVEC)
    iov["base"] = packets.ctypes.data + np.arange(streams, dtype=np.uint64) * RTP_BYTES
    iov["len"] = RTP_BYTES
    mmsg = np.zeros(streams, MMSGHDR)
    mmsg["name"] = addrs.ctypes.data + np.arange(streams, dtype=np.uint64) * SOCKADDR_IN.itemsize
    mmsg["namelen"] = SOCKADDR_IN.itemsize
    mmsg["iov"] = iov.ctypes.data + np.arange(streams, dtype=np.uint64) * IOVEC.itemsize
    mmsg["iovlen"] = 1
    bounds = np.linspace(0, streams, SLICES + 1).astype(int).tolist()
    fd, sent, errors, late, k = sock.fileno(), 0, 0, 0, 0
    slice_s = TICK_S / SLICES
    ticks = int(args.seconds / TICK_S)
    t0 = time.monotonic()
    for n in range(ticks * SLICES):
        due = t0 + n * slice_s
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -slice_s:
            late += 1
        sl = n % SLICES
        lo, hi = bounds[sl], bounds[sl + 1]
        if sl == 0:
            k = n // SLICES
            packets["seq"] = k & 0xFFFF
            packets["ts"] = (k * PAYLOAD_BYTES) & 0xFFFFFFFF
            packets["b1"] = 0x80 if k == 0 else 0
        off = lo
        while off < hi:
            r = sendmmsg(fd, mmsg.ctypes.data + off * MMSGHDR.itemsize, hi - off, 0)
            if r <= 0:
                errors += 1
                off += 1
                continue
            sent += r
            off += r
    elapsed = time.monotonic() - t0
    print(json.dumps({"sent": sent, "seconds": elapsed, "errors": errors, "late_slices": late,
                      "streams": streams, "cpu_s": time.process_time()}), flush=True)  # fmt: skip


# -- the captures (each its own process, pinned) -------------------------------------------------------------


def capture_ring(args: argparse.Namespace) -> None:
    from callrec.files.pcap import UdpBlock
    from callrec.live.frames import FrameDecoder
    from callrec.live.ring import RingReader

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    packets = datagrams = blocks = 0
    with RingReader(args.interface, args.filter, block_size=args.block_size, block_count=args.block_count) as ring:
        decoder = FrameDecoder(ring.linktype)
        print("ready", flush=True)
        for batch in ring.batches(stop, poll_s=0.1):
            blocks += 1
            packets += len(batch)
            if args.decode:
                for item in decoder.items(batch):
                    datagrams += len(item) if type(item) is UdpBlock else 1
        kernel = ring.kernel_stats()
    print(json.dumps({"seen": packets, "datagrams": datagrams, "blocks": blocks, "kernel_packets": kernel.packets,
                      "drops": kernel.drops, "freezes": kernel.freezes}), flush=True)  # fmt: skip


def capture_libpcap(args: argparse.Namespace) -> None:
    """libpcap through ctypes: what a binding calling back per packet costs (the packet copied to bytes)."""
    lib = ctypes.CDLL(ctypes.util.find_library("pcap") or "libpcap.so")
    errbuf = ctypes.create_string_buffer(256)
    lib.pcap_create.restype = ctypes.c_void_p
    lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    p = ctypes.c_void_p(lib.pcap_create(args.interface.encode(), errbuf))
    for name, value in (("snaplen", 262144), ("promisc", 1), ("timeout", 50), ("buffer_size", args.block_size *
                                                                                 args.block_count)):  # fmt: skip
        getattr(lib, f"pcap_set_{name}")(p, value)
    if lib.pcap_activate(p) < 0:
        sys.exit("pcap_activate failed")
    program = ctypes.create_string_buffer(16)
    if lib.pcap_compile(p, program, args.filter.encode(), 1, 0xFFFFFFFF) or lib.pcap_setfilter(p, program):
        sys.exit("pcap filter failed")
    lib.pcap_setnonblock(p, 1, errbuf)
    fd = lib.pcap_get_selectable_fd(p)
    seen = [0]
    frames: list[bytes] = []
    # struct pcap_pkthdr: struct timeval (two longs), caplen, len
    caplen_at = 2 * ctypes.sizeof(ctypes.c_long) // 4
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32 * 8), ctypes.c_void_p)

    def handler(_user: object, header: Any, data: int) -> None:
        seen[0] += 1
        frames.append(ctypes.string_at(data, header.contents[caplen_at]))

    callback = handler_type(handler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    print("ready", flush=True)
    while not stop.is_set():
        poll.poll(100)
        while lib.pcap_dispatch(p, -1, callback, None) > 0:
            frames.clear()
    stats = (ctypes.c_uint * 3)()
    lib.pcap_stats(p, stats)
    lib.pcap_close(p)
    print(json.dumps({"seen": seen[0], "kernel_packets": stats[0], "drops": stats[1], "freezes": -1}), flush=True)


# -- the orchestra ---------------------------------------------------------------------------------------------


def ticks_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def softnet_drops() -> int:
    with open("/proc/net/softnet_stat") as f:
        return sum(int(line.split()[1], 16) for line in f)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_ready(proc: subprocess.Popen[str], stream: str, pattern: str) -> None:
    """Wait for ``pattern`` in the process's stdout or stderr (read line by line, bounded)."""
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([pipe], [], [], 0.5)
        if ready:
            line = pipe.readline()
            if pattern in line:
                return
            if not line and proc.poll() is not None:
                break
    raise RuntimeError(f"{proc.args!r} never said {pattern!r}")


def one_run(args: argparse.Namespace, kind: str, net: dict[str, str]) -> dict[str, object]:
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--interface", net["interface"], "--filter", args.filter, "--block-size", str(args.block_size),
              "--block-count", str(args.block_count)]  # fmt: skip
    if kind == "ring":
        argv = [*me, "--capture-ring", *common, *([] if args.decode else ["--no-decode"])]
        stream, pattern = "stdout", "ready"
    elif kind == "libpcap":
        argv = [*me, "--capture-libpcap", *common]
        stream, pattern = "stdout", "ready"
    else:
        buffer_kib = args.block_size * args.block_count // 1024
        argv = ["tcpdump", "-i", net["interface"], "-n", "-q", "-B", str(buffer_kib), "-w", "/dev/null", args.filter]
        stream, pattern = "stderr", "listening on"
    load_before = loadavg()
    cap = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: pin(args.cpu_cap, args.nice))  # fmt: skip
    try:
        wait_ready(cap, stream, pattern)
        ticks0, softnet0 = ticks_of(cap.pid), softnet_drops()
        gen = subprocess.run(
            ["ip", "netns", "exec", net["netns"], *me, "--generate", "--target", net["target"], "--pps",
             str(args.pps), "--seconds", str(args.seconds)],
            capture_output=True, text=True, timeout=args.seconds * 3 + 60,
            preexec_fn=lambda: pin(args.cpu_gen, args.nice),
        )  # fmt: skip
        if gen.returncode != 0:
            raise RuntimeError(f"the generator failed: {gen.stderr.strip()}")
        sent = json.loads(gen.stdout.strip().splitlines()[-1])
        time.sleep(TAIL_S)
        cap.send_signal(signal.SIGINT if kind == "tcpdump" else signal.SIGTERM)
        _, status, usage = os.wait4(cap.pid, 0)
        cap.returncode = os.waitstatus_to_exitcode(status)
        out = cap.stdout.read() if cap.stdout else ""
        err = cap.stderr.read() if cap.stderr else ""
    finally:
        if cap.returncode is None and cap.poll() is None:
            cap.kill()
            cap.wait(STOP_TIMEOUT_S)
    cpu_s = usage.ru_utime + usage.ru_stime - ticks0 / CLK_TCK
    if kind == "tcpdump":
        got = {k: int(m.group(1)) if (m := re.search(rf"(\d+) packets? {k}", err)) else -1
               for k in ("captured", "received by filter", "dropped by kernel")}  # fmt: skip
        figures: dict[str, object] = {"seen": got["captured"], "kernel_packets": got["received by filter"],
                                      "drops": got["dropped by kernel"], "freezes": -1}  # fmt: skip
    else:
        figures = json.loads(out.strip().splitlines()[-1])
    seen = int(figures["seen"])  # type: ignore[call-overload]
    return {
        "kind": kind, **figures, "sent": sent["sent"], "gen": sent, "cpu_s": cpu_s,
        "cpu_s_per_100k": cpu_s * 100_000 / max(seen, 1), "pps": sent["sent"] / sent["seconds"],
        "softnet_drops": softnet_drops() - softnet0, "load_before": load_before, "load_after": loadavg(),
    }  # fmt: skip


def make_net() -> dict[str, str]:
    tag = secrets.token_hex(3)
    third = int(tag[:2], 16)
    net = {"netns": f"cb{tag}", "interface": f"cb{tag}a", "peer": f"cb{tag}b", "ip": f"198.19.{third}.1",
           "peer_ip": f"198.19.{third}.2", "target": f"198.19.{third}.9"}  # fmt: skip
    run("ip", "netns", "add", net["netns"])
    run("ip", "link", "add", net["interface"], "type", "veth", "peer", "name", net["peer"], "netns", net["netns"])
    run("ip", "addr", "add", f"{net['ip']}/24", "dev", net["interface"])
    run("ip", "link", "set", net["interface"], "up")
    run("ip", "-n", net["netns"], "addr", "add", f"{net['peer_ip']}/24", "dev", net["peer"])
    run("ip", "-n", net["netns"], "link", "set", net["peer"], "up")
    run("ip", "-n", net["netns"], "neigh", "add", net["target"], "lladdr", FOREIGN_MAC, "dev", net["peer"],
        "nud", "permanent")  # fmt: skip
    return net


def drop_net(net: dict[str, str]) -> None:
    subprocess.run(["ip", "link", "del", net["interface"]], capture_output=True, timeout=30)
    subprocess.run(["ip", "netns", "del", net["netns"]], capture_output=True, timeout=30)


def report(r: dict[str, object]) -> str:
    name = {"ring": "callrec ring (TPACKET_V3)", "tcpdump": "tcpdump -w /dev/null", "libpcap": "libpcap via ctypes"}
    sent, seen = int(r["sent"]), int(r["seen"])  # type: ignore[call-overload]
    return (f"| {name[str(r['kind'])]} | {r['pps']:,.0f} | {sent:,} | {seen:,} | {sent - seen:,} | {r['drops']} | "
            f"{r['cpu_s']:.2f} | {r['cpu_s_per_100k']:.3f} | {r['softnet_drops']} | {r['load_before']} → "
            f"{r['load_after']} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pps", type=int, default=100_000, help="packets per second (default 100000: 1000 calls)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of traffic per capture (default 10)")
    ap.add_argument("--cpu-gen", type=int, default=0, help="core of the generator (default 0)")
    ap.add_argument("--cpu-cap", type=int, default=1, help="core of the capture under test (default 1)")
    ap.add_argument("--block-size", type=int, default=4 << 20, help="ring block bytes (default 4 MiB)")
    ap.add_argument("--block-count", type=int, default=64, help="ring blocks (default 64); tcpdump -B the same")
    ap.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True,
                    help="decode every block into UdpBlock/Datagram items (default on)")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness of the generator and the capture (e.g. -10 on a machine others load; default 0)")
    ap.add_argument("--libpcap", action="store_true", help="also libpcap through ctypes, a callback per packet")
    ap.add_argument("--filter", default="", help=argparse.SUPPRESS)
    ap.add_argument("--interface", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--capture-ring", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--capture-libpcap", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        return generate(args)
    if args.capture_ring:
        return capture_ring(args)
    if args.capture_libpcap:
        return capture_libpcap(args)
    if os.geteuid() != 0 or not shutil.which("tcpdump") or not shutil.which("ip"):
        sys.exit("bench/capture.py needs root, iproute2 and tcpdump")
    net = make_net()
    args.filter = f"udp and dst host {net['target']}"
    rows: list[str] = []
    notes: list[str] = []
    try:
        for kind in ("ring", "tcpdump", *(["libpcap"] if args.libpcap else [])):
            r = one_run(args, kind, net)
            print(json.dumps(r), flush=True)
            rows.append(report(r))
            gen = r["gen"]
            assert isinstance(gen, dict)
            if float(r["pps"]) < 0.95 * args.pps:  # type: ignore[arg-type]
                notes.append(f"{r['kind']}: the generator reached {r['pps']:,.0f} packets/s, not {args.pps:,} "
                             f"({gen['late_slices']} of its 1 ms slices late; its CPU {gen['cpu_s']:.1f} s over "
                             f"{gen['seconds']:.1f} s): the machine was busy")  # fmt: skip
    finally:
        drop_net(net)
    print(f"\n{args.pps:,} packets/s for {args.seconds:g} s from one generator core ({args.cpu_gen}) over a veth; "
          f"each capture alone on core {args.cpu_cap}; ring {args.block_count} x {args.block_size} bytes, filter "
          f"'{args.filter}'; decode {'on' if args.decode else 'off'}; nice {args.nice}; "
          f"{os.cpu_count()} cores")  # fmt: skip
    print("| capture | packets/s | sent | seen | missing | kernel drops | CPU s | CPU s per 100k packets | "
          "softnet drops | load average |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for note in notes:
        print(f"note: {note}")
    with contextlib.suppress(Exception):
        print("commit: " + subprocess.run(["git", "log", "-1", "--oneline"], capture_output=True, text=True,
                                          cwd=Path(__file__).parent).stdout.strip())


if __name__ == "__main__":
    main()
