"""The pcapng block loop of the capture reader.

Sections (SHB) may switch byte order; each interface (IDB) has its own link type and timestamp
resolution (``if_tsresol``) and offset (``if_tsoffset``). Packets come in enhanced (EPB), simple (SPB)
and obsolete (PB) packet blocks; every other block is skipped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Protocol

from callrec.wire.netparse import (
    MAX_FRAME_BYTES,
    PROTO_UDP,
    Datagram,
    FastUnpack,
    NetDecoder,
    fast_path_for,
)

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_PB = 0x00000002
BLOCK_SPB = 0x00000003
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
# blocks other than packets (name resolution, journal exports) may be large, but not this large
MAX_BLOCK_BYTES = 16 << 20

OPT_END = 0
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
DEFAULT_TS_DIVISOR = 10**6

# linktype, timestamp divisor, timestamp offset (s), fast-path unpack, link header length, link
# protocol field, fast-path minimum frame length
Interface = tuple[int, int, int, FastUnpack, int, bytes, int]


class ChunkSource(Protocol):
    """What the block loop needs from the reader: the file in chunks, counters, and damage reports."""

    stats: dict[str, int]
    bytes_read: int

    def read_chunk(self, buf: bytes, off: int) -> bytes | None: ...

    def mark_truncated(self) -> None: ...

    def mark_damaged(self, offset: int) -> None: ...

    def finish(self) -> None: ...


def parse_idb(buf: bytes, block: int, length: int, endian: str) -> Interface:
    """Link type and timestamp scale of one interface description block at ``buf[block:]``."""
    linktype, div, offset = -1, DEFAULT_TS_DIVISOR, 0
    if length >= 20:
        (linktype,) = struct.unpack_from(endian + "H", buf, block + 8)
        option_header = struct.Struct(endian + "HH").unpack_from
        p, stop = block + 16, block + length - 4
        while p + 4 <= stop:
            code, size = option_header(buf, p)
            value = p + 4
            if code == OPT_END or value + size > stop:
                break
            if code == OPT_IF_TSRESOL and size >= 1:
                # high bit set: a negative power of two, else a negative power of ten
                resol = buf[value]
                div = 2 ** (resol & 0x7F) if resol & 0x80 else 10**resol
            elif code == OPT_IF_TSOFFSET and size >= 8:
                (offset,) = struct.unpack_from(endian + "q", buf, value)
            p = value + ((size + 3) & ~3)
    return (linktype, div, offset, *fast_path_for(linktype))


def iter_pcapng(source: ChunkSource, decoder: NetDecoder, endian: str) -> Iterator[Datagram]:
    """Datagrams of a pcapng file, read from its start through ``source``."""
    stats = source.stats
    decode = decoder.decode
    new = tuple.__new__
    block_header: Any = struct.Struct(endian + "II").unpack_from
    epb: Any = struct.Struct(endian + "IIIII").unpack_from
    pb: Any = struct.Struct(endian + "HxxIII").unpack_from
    interfaces: list[Interface] = []
    iid = current = -1
    linktype, div, ts_offset, fast, l2, want, fast_min = (-1, DEFAULT_TS_DIVISOR, 0, *fast_path_for(-1))
    ts = 0.0
    buf = b""
    off = n = 0
    while True:
        if off + 12 > n:
            more = source.read_chunk(buf, off)
            if more is None:
                if off < n:
                    source.mark_truncated()
                break
            buf, off, n = more, 0, len(more)
            continue
        kind, length = block_header(buf, off)
        if kind == BLOCK_SHB:
            # a new section may change byte order and starts with no interfaces
            section_endian = BYTE_ORDER_MAGIC.get(buf[off + 8 : off + 12])
            if section_endian is None or (length := _length(buf, off + 4, section_endian)) < 28:
                source.mark_damaged(source.bytes_read - n + off)
                break
            if section_endian != endian:
                endian = section_endian
                block_header = struct.Struct(endian + "II").unpack_from
                epb = struct.Struct(endian + "IIIII").unpack_from
                pb = struct.Struct(endian + "HxxIII").unpack_from
            interfaces = []
            current = -1
        if length < 12 or length & 3 or length > MAX_BLOCK_BYTES:
            source.mark_damaged(source.bytes_read - n + off)
            break
        if off + length > n:
            more = source.read_chunk(buf, off)
            if more is None:
                source.mark_truncated()
                break
            buf, off, n = more, 0, len(more)
            continue
        block = off
        off += length
        if kind == BLOCK_EPB and length >= 32:
            iid, high, low, caplen, _ = epb(buf, block + 8)
            start = block + 28
            units: int | None = (high << 32) | low
            room = length - 32
        elif kind == BLOCK_SPB and length >= 16:
            iid, start, units, room = 0, block + 12, None, length - 16
            # a simple packet block records only the original length; the data is what fits
            caplen = min(_length(buf, block + 4, endian), room)
        elif kind == BLOCK_PB and length >= 32:
            iid, high, low, caplen = pb(buf, block + 8)
            start = block + 28
            units = (high << 32) | low
            room = length - 32
        elif kind == BLOCK_IDB:
            interfaces.append(parse_idb(buf, block, length, endian))
            continue
        else:
            continue
        stats["packets"] += 1
        if iid != current:
            if iid >= len(interfaces):
                stats["malformed"] += 1
                continue
            current = iid
            linktype, div, ts_offset, fast, l2, want, fast_min = interfaces[iid]
        if caplen > room or caplen > MAX_FRAME_BYTES:
            stats["malformed"] += 1
            continue
        if units is not None:  # simple packet blocks carry no time: keep the previous packet's
            ts = units / div + ts_offset if ts_offset else units / div
        if caplen >= fast_min:
            link, vihl, total, frag, proto, src, dst, sport, dport, ulen = fast(buf, start)
            if (
                link == want
                and vihl == 0x45
                and proto == PROTO_UDP
                and not frag & 0x3FFF
                and 8 <= ulen <= total - 20
                and total <= caplen - l2
            ):
                stats["datagrams"] += 1
                p = start + l2 + 28
                yield new(Datagram, (ts, PROTO_UDP, src, sport, dst, dport, buf[p : p + ulen - 8]))
                continue
        datagrams = decode(linktype, buf, start, start + caplen, ts)
        if datagrams:
            stats["datagrams"] += len(datagrams)
            yield from datagrams
    source.finish()


def _length(buf: bytes, at: int, endian: str) -> int:
    value: int = struct.unpack_from(endian + "I", buf, at)[0]
    return value
