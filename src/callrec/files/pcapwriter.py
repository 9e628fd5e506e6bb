"""Writing tapes: classic libpcap files of raw IP (LINKTYPE_RAW) that Wireshark opens as they are.

Live-captured media arrives from a socket without headers, so each datagram gets an IPv4 or IPv6 and a
UDP header rebuilt from the socket addresses. A tape left behind by a crash can be reopened with
``append=True``: a record cut off mid-write is dropped and writing continues after the last whole one.
"""

from __future__ import annotations

import os
import struct
from types import TracebackType
from typing import BinaryIO

from callrec.errors import CaptureError, OutputError
from callrec.wire.netparse import LINKTYPE_RAW, MAX_FRAME_BYTES, PROTO_UDP

CHUNK_BYTES = 1 << 20
SNAPLEN = 262144
TTL = 64
IPV4_DONT_FRAGMENT = 0x4000
IPV4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"
MAGIC_MICRO = 0xA1B2C3D4
MAGIC_NANO = 0xA1B23C4D
MAX_CACHED_HEADERS = 1024

_IP4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
# the IPv4 header words that never change: version/IHL, flags, TTL/protocol
_IP4_FIXED_WORDS = 0x4500 + IPV4_DONT_FRAGMENT + (TTL << 8 | PROTO_UDP)
_IP6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")


def _checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of data that is not all zeros.

    2**16 is 1 modulo 0xFFFF, so the big integer's remainder is the one's-complement sum of its 16-bit
    words (with 0xFFFF standing for 0); this runs in C instead of a Python loop over words.
    """
    if len(data) & 1:
        data += b"\x00"
    return 0xFFFF - (int.from_bytes(data, "big") % 0xFFFF or 0xFFFF)


def _scan_records(f: BinaryIO, endian: str) -> int:
    """File offset just after the last complete, plausible record (24 when there is none)."""
    record = struct.Struct(endian + "IIII")
    f.seek(24)
    buf, base, pos = b"", 24, 24  # buf holds the file from offset ``base``
    while True:
        rel = pos - base
        need = rel + 16
        if need <= len(buf):
            caplen = record.unpack_from(buf, rel)[2]
            if caplen > MAX_FRAME_BYTES:
                return pos
            need += caplen
            if need <= len(buf):
                pos += 16 + caplen
                continue
        chunk = f.read(CHUNK_BYTES)
        if not chunk:
            return pos
        buf, base = buf[rel:] + chunk, pos


class PcapWriter:
    """Appends UDP datagrams to a classic pcap file (raw IP, microsecond timestamps).

    ``append=True`` continues an existing file written by this class (or any raw-IP pcap), dropping a
    partial trailing record; a missing or header-less file is started afresh.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.name = os.fspath(path)
        self._headers: dict[tuple[bytes, int, bytes, int, int], bytes] = {}
        self._endian = "<"
        self._ts_scale = 1_000_000
        try:
            if append and os.path.exists(path):
                self._file: BinaryIO = open(path, "r+b")  # noqa: SIM115 - closed by close()
                self._reopen()
            else:
                self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
                self._write_header()
        except OSError as exc:
            raise OutputError(f"{self.name}: {exc.strerror or exc}") from exc
        self._record = struct.Struct(self._endian + "IIII")

    def _write_header(self) -> None:
        self._file.write(struct.pack("<IHHiIII", MAGIC_MICRO, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))

    def _reopen(self) -> None:
        f = self._file
        head = f.read(24)
        if len(head) < 24:  # the crash came before the header was complete
            f.seek(0)
            f.truncate()
            self._write_header()
            return
        for endian in "<>":
            magic, linktype = struct.unpack_from(endian + "I16xI", head)
            if magic in (MAGIC_MICRO, MAGIC_NANO):
                break
        else:
            f.close()
            raise CaptureError(f"{self.name}: not a pcap capture, cannot append to it")
        if linktype & 0x0FFFFFFF != LINKTYPE_RAW:
            f.close()
            raise CaptureError(f"{self.name}: link type {linktype} is not raw IP, cannot append to it")
        self._endian = endian
        self._ts_scale = 1_000_000_000 if magic == MAGIC_NANO else 1_000_000
        end = _scan_records(f, endian)
        f.truncate(end)
        f.seek(end)

    def write(self, ts: float, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> None:
        """Write one UDP datagram received at ``ts`` (seconds since epoch) from src:sport to dst:dport."""
        if len(src) != len(dst):  # a dual-stack socket may report one side IPv4-mapped
            src = src if len(src) == 16 else IPV4_MAPPED_PREFIX + src
            dst = dst if len(dst) == 16 else IPV4_MAPPED_PREFIX + dst
        udp_len = 8 + len(payload)
        # a live tape holds few flows of mostly equal-sized packets: their headers are made once
        key = (src, sport, dst, dport, udp_len)
        header = self._headers.get(key)
        if header is None:
            header = self._header(src, sport, dst, dport, payload, udp_len)
            if len(src) == 4:
                if len(self._headers) >= MAX_CACHED_HEADERS:
                    self._headers.clear()
                self._headers[key] = header
        sec = int(ts)
        frac = round((ts - sec) * self._ts_scale)
        if frac >= self._ts_scale:
            sec, frac = sec + 1, frac - self._ts_scale
        size = len(header) + len(payload)
        try:
            self._file.write(self._record.pack(sec, frac, size, size) + header + payload)
        except OSError as exc:
            raise OutputError(f"{self.name}: {exc.strerror or exc}") from exc

    def _header(self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes, udp_len: int) -> bytes:
        """The IP and UDP headers of one datagram (IPv6 needs the payload for its UDP checksum)."""
        if len(src) == 4:
            total = 20 + udp_len
            if total > 0xFFFF:
                raise OutputError(f"a UDP payload of {len(payload)} bytes does not fit in one IPv4 packet")
            # an atomic datagram (DF set) needs no identification (RFC 6864), so headers can be reused
            ident = 0
            # the header checksum from its 16-bit words (see _checksum), without packing the header twice
            words = _IP4_FIXED_WORDS + total + ident + int.from_bytes(src + dst, "big")
            checksum = 0xFFFF - (words % 0xFFFF or 0xFFFF)
            # a zero UDP checksum means "none" in IPv4, which spares a pass over the payload
            header = _IP4_UDP.pack(
                0x45,
                0,
                total,
                ident,
                IPV4_DONT_FRAGMENT,
                TTL,
                PROTO_UDP,
                checksum,
                src,
                dst,
                sport,
                dport,
                udp_len,
                0,
            )
        elif len(src) == 16:
            if udp_len > 0xFFFF:
                raise OutputError(f"a UDP payload of {len(payload)} bytes does not fit in one IPv6 packet")
            pseudo = src + dst + struct.pack("!II", udp_len, PROTO_UDP)
            checksum = _checksum(pseudo + _UDP.pack(sport, dport, udp_len, 0) + payload) or 0xFFFF
            header = _IP6.pack(0x60000000, udp_len, PROTO_UDP, TTL, src, dst)
            header += _UDP.pack(sport, dport, udp_len, checksum)
        else:
            raise OutputError(f"a packed IP address is 4 or 16 bytes, not {len(src)}")
        return header

    def flush(self) -> None:
        """Push buffered records to the operating system (a crash after this loses nothing)."""
        try:
            self._file.flush()
        except OSError as exc:
            raise OutputError(f"{self.name}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def reopen(self) -> None:
        """Open the file again after ``close`` to append more records: what this writer wrote is whole, so
        nothing is scanned (``append=True`` checks a file someone else may have left half written)."""
        try:
            self._file = open(self.name, "ab")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise OutputError(f"{self.name}: {exc.strerror or exc}") from exc

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
