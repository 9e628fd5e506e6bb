"""From one captured frame to the UDP datagrams and TCP payloads it carries.

This is the general (slow) path of the capture reader: every link type, VLAN tags, IPv4 options, IPv6
extension headers, fragments and TCP. The reader handles plain Ethernet/IPv4/UDP itself, inline, and
calls :meth:`NetDecoder.decode` for everything else. Bad packets are counted in ``stats``, never raised.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from callrec.errors import ParseError
from callrec.wire.netreasm import FragmentTable, TcpStreams

# no real link has frames this big (libpcap's own snaplen maximum); a bigger record means damage
MAX_FRAME_BYTES = 256 * 1024

PROTO_TCP = 6
PROTO_UDP = 17

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# DLT_RAW had the numbers 12 and 14 on some BSDs before LINKTYPE_RAW (101) existed
RAW_IP_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})
# the 4-byte address family of BSD loopback is in the capturing host's byte order, so sniff the IP version
NULL_LINKTYPES = frozenset({LINKTYPE_NULL, LINKTYPE_LOOP})
SUPPORTED_LINKTYPES = (
    RAW_IP_LINKTYPES
    | NULL_LINKTYPES
    | {
        LINKTYPE_ETHERNET,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
    }
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
VLAN_ETHERTYPES = frozenset({0x8100, 0x88A8, 0x9100})

# IPv6 extension headers that may precede the transport header (fragment header 44 handled apart)
_IP6_HOP_BY_HOP = 0
_IP6_ROUTING = 43
_IP6_FRAGMENT = 44
_IP6_AUTH = 51
_IP6_DEST_OPTS = 60
_IP6_EXTENSIONS = frozenset({_IP6_HOP_BY_HOP, _IP6_ROUTING, _IP6_FRAGMENT, _IP6_AUTH, _IP6_DEST_OPTS})

_U16 = struct.Struct("!H")
_IP4 = struct.Struct("!BxHHHxB2x4s4s")  # ver/ihl, total length, id, flags/offset, proto, src, dst
_IP6 = struct.Struct("!B3xHBx16s16s")  # version..., payload length, next header, src, dst
_IP6_FRAG = struct.Struct("!BxHI")  # next header, offset/flags, identification
_UDP = struct.Struct("!HHH")  # sport, dport, length
_TCP = struct.Struct("!HHI4xH")  # sport, dport, seq, data offset/flags

_tuple_new = tuple.__new__


class Datagram(NamedTuple):
    """One UDP datagram, or one in-order piece of a TCP stream, with its capture time."""

    ts: float  # packet timestamp, seconds since epoch
    proto: int  # 17 = UDP, 6 = TCP
    src: bytes  # packed IP address: 4 bytes IPv4, 16 bytes IPv6 (packed, not str, for speed)
    sport: int
    dst: bytes
    dport: int
    payload: bytes


def format_addr(addr: bytes) -> str:
    """Packed IPv4/IPv6 address to text: ``b"\\x01\\x02\\x03\\x04"`` -> ``"1.2.3.4"``."""
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if len(addr) == 16:
        return socket.inet_ntop(socket.AF_INET6, addr)
    raise ParseError(f"a packed IP address is 4 or 16 bytes, not {len(addr)}")


def pack_addr(text: str) -> bytes:
    """Text IPv4/IPv6 address to its packed form (the inverse of :func:`format_addr`)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
    raise ParseError(f"{text!r} is not an IPv4 or IPv6 address")


class NetDecoder:
    """Decodes frames of any supported link type; keeps the fragment and TCP reassembly state.

    ``warn`` receives one-line warnings (each unsupported link type is reported once).
    """

    def __init__(self, stats: dict[str, int], warn: Callable[[str], None]) -> None:
        self.stats = stats
        self._warn = warn
        self._fragments = FragmentTable(stats)
        self._tcp = TcpStreams(stats)
        self._unsupported: set[int] = set()

    def _count(self, name: str) -> list[Datagram]:
        self.stats[name] = self.stats.get(name, 0) + 1
        return []

    def decode(self, linktype: int, buf: bytes, start: int, end: int, ts: float) -> list[Datagram]:
        """Datagrams completed by the frame ``buf[start:end]`` (none, one, or several for TCP)."""
        if linktype == LINKTYPE_ETHERNET:
            ethertype_at, p = start + 12, start + 14
        elif linktype in RAW_IP_LINKTYPES:
            return self._ip(buf, start, end, ts)
        elif linktype in NULL_LINKTYPES:
            return self._ip(buf, start + 4, end, ts)
        elif linktype == LINKTYPE_LINUX_SLL:
            ethertype_at, p = start + 14, start + 16
        elif linktype == LINKTYPE_LINUX_SLL2:
            ethertype_at, p = start, start + 20
        else:
            if linktype not in self._unsupported:
                self._unsupported.add(linktype)
                self._warn(f"link type {linktype} is not supported: its packets are skipped")
            return self._count("unsupported_link")
        if p > end:
            return self._count("malformed")
        (ethertype,) = _U16.unpack_from(buf, ethertype_at)
        # 802.1Q and QinQ tags, possibly stacked: 2 bytes of tag control, then the next ethertype
        while ethertype in VLAN_ETHERTYPES:
            if p + 4 > end:
                return self._count("malformed")
            (ethertype,) = _U16.unpack_from(buf, p + 2)
            p += 4
        if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
            return self._ip(buf, p, end, ts)
        return self._count("non_ip")

    def _ip(self, buf: bytes, p: int, end: int, ts: float) -> list[Datagram]:
        if p >= end:
            return self._count("malformed")
        version = buf[p] >> 4
        if version == 4:
            return self._ipv4(buf, p, end, ts)
        if version == 6:
            return self._ipv6(buf, p, end, ts)
        return self._count("malformed")

    def _ipv4(self, buf: bytes, p: int, end: int, ts: float) -> list[Datagram]:
        if end - p < 20:
            return self._count("malformed")
        vihl, total, ident, frag, proto, src, dst = _IP4.unpack_from(buf, p)
        header_len = (vihl & 0x0F) * 4
        if total == 0:
            total = end - p  # segmentation offload on the capturing host leaves the length zero
        if header_len < 20 or total < header_len or p + total > end:
            return self._count("malformed")
        if frag & 0x3FFF:  # more-fragments flag or a non-zero offset
            whole = self._fragments.add(
                (src, dst, ident, proto),
                (frag & 0x1FFF) * 8,
                bool(frag & 0x2000),
                buf[p + header_len : p + total],
                ts,
            )
            if whole is None:
                return []
            return self._transport(proto, src, dst, whole, 0, len(whole), ts)
        return self._transport(proto, src, dst, buf, p + header_len, p + total, ts)

    def _ipv6(self, buf: bytes, p: int, end: int, ts: float) -> list[Datagram]:
        if end - p < 40:
            return self._count("malformed")
        _, payload_len, next_header, src, dst = _IP6.unpack_from(buf, p)
        # a zero payload length means a jumbogram or segmentation offload: take what was captured
        stop = p + 40 + payload_len if payload_len else end
        if stop > end:
            return self._count("malformed")
        return self._ip6_chain(next_header, src, dst, buf, p + 40, stop, ts, False)

    def _ip6_chain(
        self, nh: int, src: bytes, dst: bytes, buf: bytes, q: int, end: int, ts: float, reassembled: bool
    ) -> list[Datagram]:
        while nh in _IP6_EXTENSIONS:
            if q + 8 > end:
                return self._count("malformed")
            if nh == _IP6_FRAGMENT:
                if reassembled:
                    return self._count("malformed")
                nh, offset_flags, ident = _IP6_FRAG.unpack_from(buf, q)
                whole = self._fragments.add(
                    (src, dst, ident, nh), offset_flags & 0xFFF8, bool(offset_flags & 1), buf[q + 8 : end], ts
                )
                if whole is None:
                    return []
                return self._ip6_chain(nh, src, dst, whole, 0, len(whole), ts, True)
            length = (buf[q + 1] + 2) * 4 if nh == _IP6_AUTH else (buf[q + 1] + 1) * 8
            nh = buf[q]
            q += length
        return self._transport(nh, src, dst, buf, q, end, ts)

    def _transport(
        self, proto: int, src: bytes, dst: bytes, buf: bytes, q: int, end: int, ts: float
    ) -> list[Datagram]:
        if proto == PROTO_UDP:
            if end - q < 8:
                return self._count("malformed")
            sport, dport, length = _UDP.unpack_from(buf, q)
            if length == 0:
                length = end - q  # offloaded or jumbo: trust the IP length
            if length < 8 or q + length > end:
                return self._count("malformed")
            return [_tuple_new(Datagram, (ts, PROTO_UDP, src, sport, dst, dport, buf[q + 8 : q + length]))]
        if proto == PROTO_TCP:
            if end - q < 20:
                return self._count("malformed")
            sport, dport, seq, offset_flags = _TCP.unpack_from(buf, q)
            header_len = (offset_flags >> 12) * 4
            if header_len < 20 or q + header_len > end:
                return self._count("malformed")
            self.stats["tcp_segments"] = self.stats.get("tcp_segments", 0) + 1
            flow = (src, sport, dst, dport)
            pieces = self._tcp.segment(flow, seq, offset_flags & 0x3F, buf[q + header_len : end])
            return [_tuple_new(Datagram, (ts, PROTO_TCP, src, sport, dst, dport, piece)) for piece in pieces]
        return self._count("other_proto")


# the fast path reads the link layer's protocol field (nothing for raw IP) and the IPv4 and UDP headers
# in one unpack: ver/ihl, total length, flags/offset, protocol, src, dst, sport, dport, UDP length
_IP4_UDP_FIELDS = "B x H 2x H x B 2x 4s 4s H H H"
FastUnpack = Callable[[bytes, int], tuple[Any, ...]]
FastPath = tuple[FastUnpack, int, bytes, int]
_NO_FAST_PATH: FastPath = (struct.Struct("!0s").unpack_from, 0, b"never", 1 << 62)


# where plain IPv4 sits in a frame of each link type: (link header length, offset of the link layer's
# protocol field or -1 when there is none to check, the value it must hold)
_FAST_LAYOUTS: dict[int, tuple[int, int, bytes]] = {
    LINKTYPE_ETHERNET: (14, 12, b"\x08\x00"),
    LINKTYPE_LINUX_SLL: (16, 14, b"\x08\x00"),
    LINKTYPE_LINUX_SLL2: (20, 0, b"\x08\x00"),
    **{linktype: (0, -1, b"") for linktype in RAW_IP_LINKTYPES},
    **{linktype: (4, -1, b"") for linktype in NULL_LINKTYPES},
}


def fast_path_layout(linktype: int) -> tuple[int, int, bytes] | None:
    """Where plain IPv4 sits in frames of one link type: (link header length, offset of the protocol
    field to check or -1, its expected value); None for link types only :class:`NetDecoder` reads."""
    return _FAST_LAYOUTS.get(linktype)


def fast_path_for(linktype: int) -> FastPath:
    """How the reader's inline path spots plain IPv4/UDP in frames of one link type.

    Returns (unpack, link header length, expected link protocol field, minimum frame length); a frame
    shorter than the minimum, or whose fields do not match, goes to :meth:`NetDecoder.decode`.
    """
    layout = fast_path_layout(linktype)
    if layout is None:
        return _NO_FAST_PATH
    l2, field_at, want = layout
    # unpack's first field is the link protocol field (empty when there is none to check)
    prefix = f"0s {l2}x" if field_at < 0 else f"{field_at}x 2s {l2 - field_at - 2}x"
    return struct.Struct("!" + prefix + _IP4_UDP_FIELDS).unpack_from, l2, want, l2 + 28
