"""Reading pcap and pcapng captures as a stream of UDP datagrams and TCP payloads.

This is the hot path of the mixer (an hour-long call is 360,000 RTP packets), so the file is read in
1 MiB chunks and parsed with precompiled structs at offsets. Plain Ethernet (or raw, cooked, loopback)
IPv4/UDP without fragmentation is decoded inline; anything else goes to
:class:`~callrec.wire.netparse.NetDecoder`. Damage never raises mid-iteration: a cut-off file ends
the iteration with ``truncated`` set and a warning, bad packets are counted in ``stats``.

:meth:`CaptureReader.batches` goes further for the mixer: the plain IPv4/UDP records of a chunk of a
classic pcap are parsed with numpy, all at once, and handed over as one :class:`UdpBlock` of arrays.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO, NoReturn

import numpy as np
import numpy.typing as npt

from callrec.errors import CaptureError
from callrec.files.magic import PCAP_MAGICS, PCAPNG_SHB
from callrec.files.pcapchunk import IntArray, gather, scan_records
from callrec.files.pcapng import BYTE_ORDER_MAGIC, iter_pcapng
from callrec.files.pcapwriter import PcapWriter
from callrec.wire.netparse import (
    MAX_FRAME_BYTES,
    PROTO_UDP,
    Datagram,
    NetDecoder,
    fast_path_for,
    fast_path_layout,
    format_addr,
    pack_addr,
)

__all__ = ["CaptureReader", "Datagram", "PcapWriter", "UdpBlock", "format_addr", "pack_addr"]

CHUNK_BYTES = 1 << 20


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


class UdpBlock:
    """Consecutive plain IPv4/UDP datagrams from one chunk of a classic pcap, as arrays.

    ``buf`` is the chunk and ``data`` the same bytes as a numpy array; per datagram, ``ts`` is the
    capture time (exactly the ``Datagram.ts`` the record gives), ``ip`` where its IPv4 header starts in
    ``buf`` (the UDP payload starts 28 bytes later) and ``length`` its UDP payload's length.
    """

    __slots__ = ("buf", "data", "ts", "ip", "length")

    def __init__(
        self,
        buf: bytes,
        data: npt.NDArray[np.uint8],
        ts: npt.NDArray[np.float64],
        ip: IntArray,
        length: IntArray,
    ) -> None:
        self.buf = buf
        self.data = data
        self.ts = ts
        self.ip = ip
        self.length = length

    def __len__(self) -> int:
        return len(self.ts)

    def field(self, at: int, size: int) -> IntArray:
        """The big-endian ``size``-byte field ``at`` bytes after each IPv4 header (28: the UDP payload).

        A datagram too short to hold the field gets a meaningless value (read from inside the chunk, never
        past its end: the chunk's last datagram may be an 8-byte RTCP report); callers mask by ``length``.
        """
        offsets = np.minimum(self.ip + at, len(self.data) - size)
        if size == 1:
            return self.data[offsets].astype(np.int64)
        return gather(self.data, offsets, size, f">u{size}")

    def datagram(self, i: int) -> Datagram:
        """Datagram ``i``, as the reader's iterator yields it."""
        p, buf = int(self.ip[i]), self.buf
        return Datagram(
            float(self.ts[i]),
            PROTO_UDP,
            buf[p + 12 : p + 16],
            (buf[p + 20] << 8) | buf[p + 21],
            buf[p + 16 : p + 20],
            (buf[p + 22] << 8) | buf[p + 23],
            buf[p + 28 : p + 28 + int(self.length[i])],
        )


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
        decoder = self._restart()
        if self._pcap_format is None:
            return iter_pcapng(self, decoder, self._endian)
        return self._iter_pcap(decoder)

    def batches(self) -> Iterator[Datagram | UdpBlock]:
        """Iterate like ``iter(reader)``, in the same order and with the same counters, but hand the plain
        IPv4/UDP records of a classic pcap over a chunk at a time, as :class:`UdpBlock` runs."""
        decoder = self._restart()
        if self._pcap_format is None:
            return iter_pcapng(self, decoder, self._endian)
        if fast_path_layout(self.linktype) is None:
            return self._iter_pcap(decoder)
        return self._iter_pcap_blocks(decoder)

    def _restart(self) -> NetDecoder:
        self.truncated = False
        self.warnings = []
        self.stats = dict.fromkeys(COUNTERS, 0)
        self._file.seek(0)
        self.bytes_read = 0
        return NetDecoder(self.stats, self.warn)

    def _iter_pcap_blocks(self, decoder: NetDecoder) -> Iterator[Datagram | UdpBlock]:
        endian, ts_div, header_len = self._pcap_format or ("<", 1e6, 16)
        self._file.seek(24)
        self.bytes_read = 24
        caplen_at = struct.Struct(endian + "I").unpack_from
        buf = b""
        off = n = 0
        while True:
            more = self.read_chunk(buf, off)
            if more is None:
                if off < n:
                    self.mark_truncated()
                break
            buf, n = more, len(more)
            starts, caplens, off, damaged = scan_records(buf, header_len, caplen_at, endian)
            self.stats["packets"] += len(starts)
            if len(starts):
                yield from self._chunk(decoder, buf, starts, caplens, endian, ts_div, header_len)
            if damaged:
                self.mark_damaged(self.bytes_read - n + off)
                break
        self.finish()

    def _chunk(
        self,
        decoder: NetDecoder,
        buf: bytes,
        starts: IntArray,
        caplens: IntArray,
        endian: str,
        ts_div: float,
        header_len: int,
    ) -> Iterator[Datagram | UdpBlock]:
        """The records of one chunk: runs of plain IPv4/UDP as blocks, the others through the decoder."""
        data = np.frombuffer(buf, np.uint8)
        ts = gather(data, starts, 4, endian + "u4") + gather(data, starts + 4, 4, endian + "u4") / ts_div
        layout = fast_path_layout(self.linktype)
        assert layout is not None
        l2, field_at, want = layout
        frames = starts + header_len
        # the checks of _iter_pcap's inline path, on every record at once
        fast = caplens >= l2 + 28
        cand = np.flatnonzero(fast)
        ip = frames[cand] + l2
        ok = (data[ip] == 0x45) & (data[ip + 9] == PROTO_UDP) & (gather(data, ip + 6, 2, ">u2") & 0x3FFF == 0)
        if field_at >= 0:
            ok &= (data[frames[cand] + field_at] == want[0]) & (data[frames[cand] + field_at + 1] == want[1])
        total = gather(data, ip + 2, 2, ">u2")
        ulen = gather(data, ip + 24, 2, ">u2")
        ok &= (ulen >= 8) & (ulen <= total - 20) & (total <= caplens[cand] - l2)
        fast[cand] = ok
        ips = np.zeros(len(starts), np.int64)
        lengths = np.zeros(len(starts), np.int64)
        ips[cand] = ip
        lengths[cand] = ulen - 8
        self.stats["datagrams"] += int(np.count_nonzero(fast))
        at = 0
        for i in [*np.flatnonzero(~fast).tolist(), len(starts)]:
            if i > at:
                yield UdpBlock(buf, data, ts[at:i], ips[at:i], lengths[at:i])
            if i == len(starts):
                break
            start = int(frames[i])
            datagrams = decoder.decode(self.linktype, buf, start, start + int(caplens[i]), float(ts[i]))
            if datagrams:
                self.stats["datagrams"] += len(datagrams)
                yield from datagrams
            at = i + 1

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
