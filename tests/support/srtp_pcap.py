"""SRTP for sipp to play: known audio encoded by ffmpeg, made RTP, protected by libsrtp (pylibsrtp) with a key
the test chose, and written as an Ethernet pcap (dpkt) that ``play_pcap_audio`` replays as it is (sipp only
rewrites the UDP ports). Also the oracle: ffmpeg's decoding of exactly what was sent.

Run as a script (``srtp_pcap.py --log FILE PCAP HOST PORT``) it replays the UDP payloads of such a pcap to
HOST PORT at the pace of its timestamps: a SIPREC scenario's second stream, which sipp cannot play itself.
"""

from __future__ import annotations

import argparse
import base64
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import dpkt
import numpy as np

SUITE = "AES_CM_128_HMAC_SHA1_80"
PTIME_S = 0.020
FRAME = 160  # G.711 bytes (= samples) per 20 ms
PAYLOAD_TYPES = {"PCMA": 8, "PCMU": 0}


@dataclass(frozen=True, slots=True)
class SrtpAudio:
    path: Path
    packets: list[bytes]  # the SRTP packets, in the order sent
    reference: np.ndarray  # ffmpeg's decoding of the payloads sent, int16 at 8 kHz


def key_b64(key: bytes) -> str:
    """The ``inline:`` value of an ``a=crypto`` line for ``key`` (master key || salt)."""
    return base64.b64encode(key).decode()


def write(path: Path, pcm: np.ndarray, codec: str, key: bytes, ssrc: int, dport: int = 6000) -> SrtpAudio:
    """``pcm`` (int16, 8 kHz) as 20 ms RTP packets of ``codec`` from ``ssrc``, protected with ``key`` under
    AES_CM_128_HMAC_SHA1_80, written to ``path`` (127.0.0.1:dport -> 127.0.0.1:dport; sipp rewrites both)."""
    from pylibsrtp import Policy, Session

    from tests.support import synth

    encoded = synth.ffmpeg_encode(pcm, codec)
    frames = len(encoded) // FRAME
    encoded = encoded[: frames * FRAME]
    session = Session(
        Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
    )
    packets: list[bytes] = []
    seq0, ts0 = (ssrc * 7) & 0x7FFF, (ssrc * 13) & 0x7FFFFFFF
    for k in range(frames):
        header = struct.pack(
            "!BBHII", 0x80, PAYLOAD_TYPES[codec] | (0x80 if k == 0 else 0), (seq0 + k) & 0xFFFF,
            (ts0 + k * FRAME) & 0xFFFFFFFF, ssrc,
        )  # fmt: skip
        packets.append(session.protect(header + encoded[k * FRAME : (k + 1) * FRAME]))
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for k, packet in enumerate(packets):
            writer.writepkt(synth.udp_frame("127.0.0.1", dport, "127.0.0.1", dport, packet, k & 0xFFFF),
                            ts=1_700_000_000 + k * PTIME_S)  # fmt: skip
    return SrtpAudio(path, packets, synth.ffmpeg_decode(encoded, codec))


def payloads(path: Path) -> list[tuple[float, bytes]]:
    """(timestamp, UDP payload) of each packet of an Ethernet pcap."""
    out: list[tuple[float, bytes]] = []
    with path.open("rb") as f:
        for ts, frame in dpkt.pcap.Reader(f):
            out.append((float(ts), bytes(dpkt.ethernet.Ethernet(frame).data.data.data)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pcap", type=Path)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--log", help="append 'first-send-time packets' here when done")
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_DGRAM)
    packets = payloads(args.pcap)
    start = time.time()
    for ts, payload in packets:
        delay = start + (ts - packets[0][0]) - time.time()
        if delay > 0:
            time.sleep(delay)
        sock.sendto(payload, (args.host, args.port))
    if args.log:
        with open(args.log, "a") as f:
            f.write(f"{start:.6f} {len(packets)}\n")


if __name__ == "__main__":
    main()
