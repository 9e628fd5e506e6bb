"""AMR-NB in RTP (RFC 4867 §4): payload parsing into storage-format frames for libavcodec's ``amrnb``.

An RTP payload is a 4-bit codec mode request, a table of contents (one entry per frame: F = more
entries follow, FT = frame type, Q = frame is good) and the frames' speech bits. The default
"bandwidth-efficient" mode packs all of it bit by bit; ``octet-align=1`` pads each field to bytes.
Either way the speech bits are in the same order as in the AMR storage format (RFC 4867 §5.3), so a
frame is re-packed as a TOC byte ``(FT << 3) | (Q << 2)`` followed by its bits padded to whole bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from callrec.errors import ParseError
from callrec.media.codecs.base import PcmArray
from callrec.media.codecs.pyav import AvDecoder, open_context

__all__ = ["AmrDecoder", "FRAME_BITS", "storage_frames"]

# speech bits per frame type: modes 4.75 .. 12.2 kbit/s, then the SID frames (AMR, GSM-EFR, TDMA-EFR,
# PDC-EFR); 12-14 are reserved and 15 is NO_DATA
FRAME_BITS: tuple[int, ...] = (95, 103, 118, 134, 148, 159, 204, 244, 39, 43, 38, 37, -1, -1, -1, 0)
FIRST_NON_SPEECH_FT = 8
NO_DATA_FT = 15
FRAME_SAMPLES = 160  # 20 ms at 8000 Hz

Frame = tuple[int, int, bytes]  # (frame type, quality bit, speech bits padded to bytes)


def _check_ft(ft: int) -> int:
    bits = FRAME_BITS[ft]
    if bits < 0:
        raise ParseError(f"AMR payload uses reserved frame type {ft}")
    return bits


def _bandwidth_efficient(payload: bytes) -> Iterator[Frame]:
    total = len(payload) * 8
    value = int.from_bytes(payload, "big")
    pos = 4  # skip the codec mode request

    def take(count: int) -> int:
        nonlocal pos
        if pos + count > total:
            raise ParseError("AMR payload is shorter than its table of contents says")
        pos += count
        return (value >> (total - pos)) & ((1 << count) - 1)

    toc: list[tuple[int, int]] = []
    more = True
    while more:
        entry = take(6)
        more = bool(entry >> 5)
        toc.append(((entry >> 1) & 0x0F, entry & 1))
    for ft, quality in toc:
        bits = _check_ft(ft)
        pad = -bits % 8  # left-align the speech bits in whole bytes, as storage format does
        yield ft, quality, (take(bits) << pad).to_bytes((bits + pad) // 8, "big")


def _octet_aligned(payload: bytes, crc: bool) -> Iterator[Frame]:
    pos = 1  # the CMR byte
    toc: list[tuple[int, int]] = []
    more = True
    while more:
        if pos >= len(payload):
            raise ParseError("AMR payload is shorter than its table of contents says")
        entry = payload[pos]
        pos += 1
        more = bool(entry & 0x80)
        toc.append(((entry >> 3) & 0x0F, (entry >> 2) & 1))
    if crc:
        pos += sum(1 for ft, _ in toc if ft != NO_DATA_FT)  # one CRC byte per frame that has bits
    for ft, quality in toc:
        size = (_check_ft(ft) + 7) // 8
        if pos + size > len(payload):
            raise ParseError("AMR payload is shorter than its table of contents says")
        yield ft, quality, payload[pos : pos + size]
        pos += size


def storage_frames(payload: bytes, *, octet_align: bool = False, crc: bool = False) -> list[bytes]:
    """The frames of one RTP payload in AMR storage format (TOC byte + padded speech bits).

    Raises ``ParseError`` when the payload is shorter than its table of contents or uses a
    reserved frame type.
    """
    if not payload:
        raise ParseError("AMR payload is empty")
    frames = _octet_aligned(payload, crc) if octet_align else _bandwidth_efficient(payload)
    return [bytes([(ft << 3) | (quality << 2)]) + bits for ft, quality, bits in frames]


class AmrDecoder(AvDecoder):
    """AMR-NB (``AMR/8000``), bandwidth-efficient by default or octet-aligned per the SDP fmtp.

    libavcodec's native decoder has no comfort-noise generator, so SID and NO_DATA frames become
    20 ms of silence; a frame marked bad (Q = 0) still goes to the decoder, which conceals it.
    """

    def __init__(self, clock_rate: int = 8000, *, octet_align: bool = False, crc: bool = False) -> None:
        super().__init__(f"AMR/{clock_rate}", 8000, "AMR", open_context("amrnb", 8000))
        self.octet_align = octet_align or crc  # RFC 4867 §8.1: crc=1 implies octet-aligned
        self.crc = crc

    def decode(self, payload: bytes) -> PcmArray:
        """Decode every frame of one payload, 160 samples per frame."""
        parts = [
            self._decode_with(self._ctx, frame)
            if frame[0] >> 3 < FIRST_NON_SPEECH_FT
            else np.zeros(FRAME_SAMPLES, np.int16)
            for frame in storage_frames(payload, octet_align=self.octet_align, crc=self.crc)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
