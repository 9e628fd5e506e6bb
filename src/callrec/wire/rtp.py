"""RTP (RFC 3550) wire format: the fixed header, CSRCs, header extension and padding."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from callrec.errors import ParseError

RTP_HEADER_LENGTH = 12
RTP_VERSION = 2
_HEADER = struct.Struct("!BBHII")
# the fixed header's fields (V/P/X/CC byte, M/PT byte, sequence number, timestamp, SSRC) of a datagram
# known to hold 12 bytes, as a tuple and without building an RtpPacket: the mixer's per-packet fast path,
# with payload_offset for a packet with CSRCs, an extension or padding
unpack_header = _HEADER.unpack_from


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet; ``payload`` excludes padding."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension: tuple[int, bytes] | None = None
    payload: bytes = b""
    padding: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one datagram; raise ``ParseError`` with an exact sentence when it is not RTP."""
        if len(data) < RTP_HEADER_LENGTH:
            raise ParseError("RTP packet length is less than 12 bytes")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
        if b0 >> 6 != RTP_VERSION:
            raise ParseError("RTP packet has an invalid version")
        pos = RTP_HEADER_LENGTH
        cc = b0 & 0x0F
        if len(data) < pos + 4 * cc:
            raise ParseError("RTP packet is shorter than its CSRC list")
        csrc = list(struct.unpack_from(f"!{cc}I", data, pos))
        pos += 4 * cc
        extension = None
        if b0 & 0x10:
            if len(data) < pos + 4:
                raise ParseError("RTP packet is shorter than its header extension")
            profile, words = struct.unpack_from("!HH", data, pos)
            pos += 4
            if len(data) < pos + 4 * words:
                raise ParseError("RTP packet is shorter than its header extension")
            extension = (profile, bytes(data[pos : pos + 4 * words]))
            pos += 4 * words
        end = len(data)
        padding = 0
        if b0 & 0x20:
            padding = data[-1]
            if padding == 0 or end - padding < pos:
                raise ParseError("RTP packet padding is longer than its payload")
            end -= padding
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension=extension,
            payload=bytes(data[pos:end]),
            padding=padding,
        )

    def serialize(self) -> bytes:
        """Return the packet's bytes (padding is written as zeros ending in its count)."""
        b0 = (RTP_VERSION << 6) | len(self.csrc)
        if self.extension is not None:
            b0 |= 0x10
        if self.padding:
            b0 |= 0x20
        b1 = (0x80 if self.marker else 0) | self.payload_type
        out = bytearray(_HEADER.pack(b0, b1, self.sequence_number, self.timestamp, self.ssrc))
        for c in self.csrc:
            out += struct.pack("!I", c)
        if self.extension is not None:
            profile, ext = self.extension
            out += struct.pack("!HH", profile, len(ext) // 4) + ext
        out += self.payload
        if self.padding:
            out += bytes(self.padding - 1) + bytes([self.padding])
        return bytes(out)


def payload_offset(data: bytes) -> tuple[int, int]:
    """Return (start, end) of the payload in an RTP packet already known to have a valid header.

    The fast path for the mixer: no object is built. Returns (0, 0) when the lengths do not fit.
    """
    b0 = data[0]
    pos = RTP_HEADER_LENGTH + 4 * (b0 & 0x0F)
    end = len(data)
    if b0 & 0x10:
        if end < pos + 4:
            return 0, 0
        pos += 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    if b0 & 0x20:
        end -= data[-1]
    if end < pos:
        return 0, 0
    return pos, end


def is_rtcp(data: bytes) -> bool:
    """RTCP packet types 192–223 sit where RTP keeps marker+PT (RFC 5761 section 4)."""
    return len(data) >= 2 and 192 <= data[1] <= 223
