"""Reading pcap and pcapng captures as a stream of UDP datagrams and TCP payloads.

This is the hot path of the mixer (an hour-long call is 360,000 RTP packets), so the file is read in
1 MiB chunks and parsed with precompiled structs at offsets. Plain Ethernet (or raw, cooked, loopback)
IPv4/UDP without fragmentation is decoded inline; anything else goes to
:class:`~callrec.capture.netparse.NetDecoder`. Damage never raises mid-iteration: a cut-off file ends
the iteration with ``truncated`` set and a warning, bad packets are counted in ``stats``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO, NoReturn

from callrec.capture.netparse import (
    MAX_FRAME_BYTES,
    PROTO_UDP,
    Datagram,
    NetDecoder,
    fast_path_for,
    format_addr,
    pack_addr,
)
from callrec.capture.pcapng import BYTE_ORDER_MAGIC, iter_pcapng
from callrec.capture.pcapwriter import PcapWriter
from callrec.errors import CaptureError

__all__ = ["CaptureReader", "Datagram", "PcapWriter", "format_addr", "pack_addr"]

CHUNK_BYTES = 1 << 20

# magic -> byte order, timestamp fraction units per second, record header length
PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1e6, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1e9, 16),
    # Alexey Kuznetzov's patched libpcap (old Red Hat tcpdump) adds 8 bytes to each record header
    b"\x34\xcd\xb2\xa1": ("<", 1e6, 24),
    b"\xa1\xb2\xcd\x34": (">", 1e6, 24),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"

COUNTERS = (
    "packets",
    "datagrams",
    "non_ip",
    "malformed",
    "unsupported_link",
    "other_proto",
    "fragments",
    "reassembled",
    "fragments_dropped",
    "tcp_segments",
    "tcp_retransmitted",
    "tcp_gaps",
    "tcp_flows_dropped",
)
WARN_TRUNCATED = "capture is truncated: the last packet is cut off"


class CaptureReader:
    """Iterates the UDP datagrams and in-order TCP payloads of a pcap or pcapng file.

    Opening checks the file format and raises ``CaptureError`` for anything that is not a capture.
    Each iteration reads the file from the start. ``stats`` counts ``packets`` (records read),
    ``datagrams`` (yielded), ``non_ip``, ``malformed``, ``fragments``, ``reassembled``,
    ``tcp_segments`` and more; ``truncated`` and ``warnings`` report a damaged end of file.
    ``bytes_read`` / ``total_bytes`` drive a progress bar.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        try:
            self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise CaptureError(f"{self.name}: {exc.strerror or exc}") from exc
        try:
            head = self._file.read(24)
            self.total_bytes = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            self._file.close()
            raise CaptureError(f"{self.name}: {exc.strerror or exc}") from exc
        self.truncated = False
        self.warnings: list[str] = []
        self.stats: dict[str, int] = {}
        self.bytes_read = 0
        self._pcap_format = PCAP_MAGICS.get(head[:4])
        if self._pcap_format is not None:
            if len(head) < 24:
                self._fail("capture header is truncated")
            self._endian = self._pcap_format[0]
            (self.linktype,) = struct.unpack_from(self._endian + "I", head, 20)
            self.linktype &= 0x0FFFFFFF  # the top bits carry FCS information, not the link type
        elif head[:4] == PCAPNG_SHB:
            if len(head) < 12:
                self._fail("capture header is truncated")
            endian = BYTE_ORDER_MAGIC.get(head[8:12])
            if endian is None:
                self._fail("not a pcap or pcapng capture")
            self._endian = endian
            self.linktype = -1  # per interface in pcapng
        else:
            self._fail("not a pcap or pcapng capture")

    def _fail(self, what: str) -> NoReturn:
        self._file.close()
        raise CaptureError(f"{self.name}: {what}")

    def warn(self, message: str) -> None:
        """Record a one-line warning once."""
        if message not in self.warnings:
            self.warnings.append(message)

    def mark_truncated(self) -> None:
        """The file ended in the middle of a record: what came before it is still good."""
        self.truncated = True
        self.warn(WARN_TRUNCATED)

    def mark_damaged(self, offset: int) -> None:
        """A record at file ``offset`` is impossible: nothing after it can be trusted."""
        self.truncated = True
        self.warn(f"capture is damaged at byte {offset}: the rest of the file is skipped")

    def read_chunk(self, buf: bytes, off: int) -> bytes | None:
        """``buf[off:]`` followed by the next chunk of the file, or None at the end of the file."""
        try:
            chunk = self._file.read(CHUNK_BYTES)
        except OSError as exc:  # a disk error is not damage we can read past
            raise CaptureError(f"{self.name}: {exc.strerror or exc}") from exc
        if not chunk:
            return None
        self.bytes_read += len(chunk)
        return buf[off:] + chunk

    def __iter__(self) -> Iterator[Datagram]:
        self.truncated = False
        self.warnings = []
        self.stats = dict.fromkeys(COUNTERS, 0)
        self._file.seek(0)
        self.bytes_read = 0
        decoder = NetDecoder(self.stats, self.warn)
        if self._pcap_format is None:
            return iter_pcapng(self, decoder, self._endian)
        return self._iter_pcap(decoder)

    def _iter_pcap(self, decoder: NetDecoder) -> Iterator[Datagram]:
        endian, ts_div, header_len = self._pcap_format or ("<", 1e6, 16)
        self._file.seek(24)
        self.bytes_read = 24
        record = struct.Struct(endian + "IIII").unpack_from
        linktype = self.linktype
        fast, l2, want, fast_min = fast_path_for(linktype)
        decode = decoder.decode
        stats = self.stats
        new = tuple.__new__
        buf = b""
        off = n = 0
        while True:
            start = off + header_len
            if start > n:
                more = self.read_chunk(buf, off)
                if more is None:
                    if off < n:
                        self.mark_truncated()
                    break
                buf, off, n = more, 0, len(more)
                continue
            sec, frac, caplen, _ = record(buf, off)
            if caplen > MAX_FRAME_BYTES:
                self.mark_damaged(self.bytes_read - n + off)
                break
            end = start + caplen
            if end > n:
                more = self.read_chunk(buf, off)
                if more is None:
                    self.mark_truncated()
                    break
                buf, off, n = more, 0, len(more)
                continue
            off = end
            stats["packets"] += 1
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
                    ts = sec + frac / ts_div
                    yield new(Datagram, (ts, PROTO_UDP, src, sport, dst, dport, buf[p : p + ulen - 8]))
                    continue
            datagrams = decode(linktype, buf, start, end, sec + frac / ts_div)
            if datagrams:
                stats["datagrams"] += len(datagrams)
                yield from datagrams
        self.finish()

    def finish(self) -> None:
        """End of the file: sum up what was dropped in one warning."""
        if self.stats.get("malformed"):
            self.warn(f"{self.stats['malformed']} malformed packets were dropped")

    def close(self) -> None:
        """Close the file; iterating afterwards is an error."""
        self._file.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
