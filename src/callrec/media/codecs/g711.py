"""G.711 A-law and µ-law (ITU-T G.711) and linear L16 (RFC 3551 §4.5.11), decoded with numpy alone.

These are the codecs of nearly every PBX call, so decoding is a single table lookup: a one-hour call is
about 360 000 packets, and ``decode_many`` turns a whole run of them into one ``bytes.join`` and one
numpy indexing operation instead of 360 000 small ones.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from callrec.errors import ParseError
from callrec.media.codecs.base import PcmArray

__all__ = ["ALAW_TABLE", "ULAW_TABLE", "G711Decoder", "L16Decoder", "alaw_decoder", "ulaw_decoder"]


def _alaw_table() -> PcmArray:
    """The 256 A-law code words expanded to 16-bit linear, as in G.711 Table 1a (and ffmpeg's g711.h)."""
    code = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are inverted on the wire
    mantissa = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    # segment 0 is linear (step 16 around zero); above it each segment doubles the step size
    magnitude = np.where(
        segment == 0,
        mantissa + 8,
        (mantissa + 0x108) << np.maximum(segment - 1, 0),
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _ulaw_table() -> PcmArray:
    """The 256 µ-law code words expanded to 16-bit linear, as in G.711 Table 2a (and ffmpeg's g711.h)."""
    code = ~np.arange(256, dtype=np.int32) & 0xFF  # all bits are inverted on the wire
    biased = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    # the bias of 0x84 (132) keeps the segments contiguous; remove it after shifting
    return np.where(code & 0x80, 0x84 - biased, biased - 0x84).astype(np.int16)


ALAW_TABLE: PcmArray = _alaw_table()
ULAW_TABLE: PcmArray = _ulaw_table()
ALAW_TABLE.flags.writeable = False
ULAW_TABLE.flags.writeable = False


class G711Decoder:
    """PCMA or PCMU: one byte per sample, decoded through a 256-entry table."""

    def __init__(self, name: str, table: PcmArray, sample_rate: int = 8000) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self._table = table

    def decode(self, payload: bytes) -> PcmArray:
        """Decode one payload; every byte is a sample, so no payload is malformed."""
        return self._table.take(np.frombuffer(payload, np.uint8))

    def decode_many(self, payloads: list[bytes]) -> PcmArray:
        """Decode a run of payloads with one join and one lookup."""
        # ndarray.take is about 1.6x faster than fancy indexing for a uint8 index array
        return self._table.take(np.frombuffer(b"".join(payloads), np.uint8))

    def conceal(self, samples: int) -> PcmArray:
        """Silence for lost packets; G.711 has no state to extrapolate from."""
        return np.zeros(samples, np.int16)


def alaw_decoder(sample_rate: int = 8000) -> G711Decoder:
    """A decoder for ``PCMA/<sample_rate>``."""
    return G711Decoder(f"PCMA/{sample_rate}", ALAW_TABLE, sample_rate)


def ulaw_decoder(sample_rate: int = 8000) -> G711Decoder:
    """A decoder for ``PCMU/<sample_rate>``."""
    return G711Decoder(f"PCMU/{sample_rate}", ULAW_TABLE, sample_rate)


class L16Decoder:
    """L16: big-endian signed 16-bit samples, interleaved when there is more than one channel."""

    def __init__(self, sample_rate: int, channels: int = 1) -> None:
        self.name = f"L16/{sample_rate}" + (f"/{channels}" if channels > 1 else "")
        self.sample_rate = sample_rate
        self._channels = channels
        self._frame_bytes = 2 * channels

    def decode(self, payload: bytes) -> PcmArray:
        """Decode one payload; a length that is not whole sample frames is a ``ParseError``."""
        if len(payload) % self._frame_bytes:
            raise ParseError(f"L16 payload of {len(payload)} bytes is not a whole number of samples")
        return self._to_mono(np.frombuffer(payload, ">i2"))

    def decode_many(self, payloads: list[bytes]) -> PcmArray:
        """Decode a run of payloads at once (each must hold whole sample frames)."""
        for payload in payloads:
            if len(payload) % self._frame_bytes:
                raise ParseError(f"L16 payload of {len(payload)} bytes is not a whole number of samples")
        return self._to_mono(np.frombuffer(b"".join(payloads), ">i2"))

    def conceal(self, samples: int) -> PcmArray:
        """Silence for lost packets."""
        return np.zeros(samples, np.int16)

    def _to_mono(self, samples: npt.NDArray[np.int16]) -> PcmArray:
        if self._channels == 1:
            return samples.astype(np.int16)  # native byte order for the rest of the pipeline
        frames = samples.reshape(-1, self._channels).astype(np.int32)
        mono: PcmArray = (frames.sum(axis=1) // self._channels).astype(np.int16)
        return mono
