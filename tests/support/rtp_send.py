"""Send one RTP stream from a payload file, paced in real time: ``rtp_send.py [options] HOST PORT``.

Used by the sipp SIPREC scenarios for the streams sipp itself cannot play (it plays one audio stream).
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--payload", required=True, help="raw codec bytes, e.g. G.711 u-law from ffmpeg")
    ap.add_argument("--pt", type=int, default=0)
    ap.add_argument("--ssrc", type=lambda v: int(v, 0), default=0x5EED0002)
    ap.add_argument("--frame", type=int, default=160, help="bytes (= samples for G.711) per packet")
    ap.add_argument("--ptime-ms", type=float, default=20.0)
    ap.add_argument("--log", help="append 'first-send-time packets' here when done")
    args = ap.parse_args()
    data = Path(args.payload).read_bytes()
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_DGRAM)
    start = time.time()
    count = 0
    for offset in range(0, len(data) - args.frame + 1, args.frame):
        due = start + count * args.ptime_ms / 1000
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        header = struct.pack("!BBHII", 0x80, args.pt | (0x80 if count == 0 else 0), count & 0xFFFF,
                             (count * args.frame) & 0xFFFFFFFF, args.ssrc)
        sock.sendto(header + data[offset:offset + args.frame], (args.host, args.port))
        count += 1
    if args.log:
        with open(args.log, "a") as f:
            f.write(f"{start:.6f} {count}\n")


if __name__ == "__main__":
    main()
