"""A ring block's frames found and decoded without a ring: synthetic TPACKET_V3 blocks (no root needed)."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from callrec.files.pcap import UdpBlock
from callrec.live.frames import FrameDecoder
from callrec.live.ring import TP_STATUS_USER, TP_STATUS_VLAN_VALID, frames_of_block
from callrec.wire.netparse import Datagram

FIRST = 48  # where the kernel puts the first frame header after the block descriptor
MAC_AT = 66  # tp_mac of an Ethernet frame: the header, sockaddr_ll, alignment
HEADER = struct.Struct("=IIIIIIHHIIHH")


def udp_frame(payload: bytes, dport: int) -> bytes:
    udp = struct.pack("!HHHH", 5004, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02")
    return b"\x02" * 12 + b"\x08\x00" + ip + udp


def tcp_frame(payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 5060, 5060, 1000, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, b"\x0a\0\0\x01", b"\x0a\0\0\x02")
    return b"\x02" * 12 + b"\x08\x00" + ip + tcp


def block(frames: list[bytes], vlans: list[int] | None = None) -> tuple[bytes, int]:
    """A block as the kernel fills it: each frame's header ``tp_next_offset`` (8-byte aligned) before the next,
    the last one's 0; timestamps 1 ms apart."""
    out = bytearray(FIRST)
    for i, frame in enumerate(frames):
        stride = (MAC_AT + len(frame) + 7) & ~7
        vlan = vlans[i] if vlans else -1
        status = TP_STATUS_USER | (TP_STATUS_VLAN_VALID if vlan >= 0 else 0)
        sec, nsec = 1_700_000_000 + i // 1000, i % 1000 * 1_000_000
        header = HEADER.pack(0 if i == len(frames) - 1 else stride, sec, nsec, len(frame), len(frame), status,
                             MAC_AT, MAC_AT + 14, 0, max(vlan, 0), 0x8100, 0)  # fmt: skip
        out += header + bytes(MAC_AT - len(header)) + frame + bytes(stride - MAC_AT - len(frame))
    return bytes(out), len(frames)


@pytest.mark.parametrize("seed", range(8))
def test_frames_are_found_in_runs_of_one_size_and_among_mixed_sizes(seed: int) -> None:
    rng = random.Random(seed)
    sizes: list[int] = []
    while len(sizes) < 3000:  # runs of one RTP size, broken by other sizes, now and then one frame alone
        sizes += [rng.choice([12, 20, 172, 332, 1200])] * rng.choice([1, 2, 3, 5, 50, 400])
    payloads = [b"%06d" % i + bytes(size - 6) for i, size in enumerate(sizes)]
    buf, count = block([udp_frame(p, 40000) for p in payloads])
    batch = frames_of_block(buf, FIRST, count)
    assert len(batch) == count
    assert [frame[42:] for _, frame in batch.frames()] == payloads
    assert np.allclose(batch.ts, 1_700_000_000 + np.arange(count) * 1e-3)
    assert (batch.caplen == batch.wirelen).all() and (batch.vlan == -1).all()


def test_a_block_of_one_frame_and_an_empty_block() -> None:
    buf, count = block([udp_frame(b"one", 9)])
    assert [frame[42:] for _, frame in frames_of_block(buf, FIRST, count).frames()] == [b"one"]
    assert len(frames_of_block(bytes(FIRST), FIRST, 0)) == 0


def test_the_decoder_gives_udp_blocks_and_the_rest_as_datagrams_in_order() -> None:
    frames = [udp_frame(b"%06d" % i, 40000) for i in range(10)]
    frames[4] = tcp_frame(b"INVITE sip:x SIP/2.0\r\n")
    frames[7] = b"\x02" * 12 + b"\x08\x06" + bytes(28)  # ARP: not IP
    vlans = [-1] * 10
    vlans[2] = 7
    buf, count = block(frames, vlans)
    batch = frames_of_block(buf, FIRST, count)
    assert batch.vlan.tolist() == vlans
    decoder = FrameDecoder(batch_linktype := 1)
    items = list(decoder.items(batch))
    assert [type(item).__name__ for item in items] == ["UdpBlock", "Datagram", "UdpBlock", "UdpBlock"]
    assert [len(item) for item in items if isinstance(item, UdpBlock)] == [4, 2, 2]
    tcp = items[1]
    assert isinstance(tcp, Datagram) and tcp.proto == 6 and tcp.payload.startswith(b"INVITE")
    again = FrameDecoder(batch_linktype)
    assert [d.payload for d in again.datagrams(batch)] == [
        b"%06d" % i for i in range(4)
    ] + [b"INVITE sip:x SIP/2.0\r\n"] + [b"%06d" % i for i in (5, 6, 8, 9)]
    assert again.stats["packets"] == 10 and again.stats["datagrams"] == 9 and again.stats["non_ip"] == 1
