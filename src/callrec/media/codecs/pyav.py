"""Decoders built on PyAV (libavcodec): the shared plumbing and the codecs that need nothing else.

Each decoder owns one codec context for the life of its stream, because G.722, G.726, Opus, Speex
and every other ADPCM or CELP codec carries state from packet to packet; re-creating it per packet
would both cost time and click at every boundary.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import cast

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame

from callrec.errors import ParseError
from callrec.media.codecs.base import PcmArray

__all__ = [
    "AvDecoder",
    "G722Decoder",
    "G726Decoder",
    "OpusDecoder",
    "SpeexDecoder",
    "frames_to_mono",
    "open_context",
]


def open_context(codec: str, sample_rate: int, *, bit_rate: int = 0) -> AudioCodecContext:
    """A mono decoding context for ``codec``; ``bit_rate`` is how some decoders (iLBC) learn their mode."""
    ctx = cast(AudioCodecContext, av.CodecContext.create(codec, "r"))
    ctx.sample_rate = sample_rate
    ctx.layout = "mono"
    if bit_rate:
        ctx.bit_rate = bit_rate
    return ctx


def frames_to_mono(frames: Iterable[AudioFrame]) -> PcmArray:
    """Turn decoded ``av.AudioFrame`` objects into one mono int16 array.

    Decoders hand back s16, s32, u8 or float samples, planar or interleaved; float is scaled and
    clipped the way libswresample does it (``x * 32768``, rounded), and several channels are averaged.
    """
    parts = [_frame_to_mono(frame) for frame in frames]
    if not parts:
        return np.zeros(0, np.int16)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _frame_to_mono(frame: AudioFrame) -> PcmArray:
    data = np.asarray(frame.to_ndarray())
    channels: int = frame.layout.nb_channels
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T  # interleaved formats come back as one row
    if channels == 1 and data.dtype == np.int16:
        return np.asarray(data[0], np.int16)  # the common case: no arithmetic at all
    mono = data.astype(np.float64).mean(axis=0) if channels > 1 else data[0].astype(np.float64)
    kind = data.dtype
    if kind.kind == "f":
        mono *= 32768.0
    elif kind == np.int32:
        mono /= 65536.0
    elif kind == np.uint8:
        mono = (mono - 128.0) * 256.0
    clipped: PcmArray = np.clip(np.rint(mono), -32768, 32767).astype(np.int16)
    return clipped


class AvDecoder:
    """A decoder that hands every payload to one libavcodec context.

    Subclasses set up the context and may override ``decode`` to split or check the payload first;
    ``label`` is the codec's name in error messages (``"G722 payload could not be decoded"``).
    """

    def __init__(self, name: str, sample_rate: int, label: str, ctx: AudioCodecContext) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self.label = label
        self._ctx = ctx

    def decode(self, payload: bytes) -> PcmArray:
        """Decode one RTP payload; a payload libavcodec rejects is a ``ParseError``."""
        return self._decode_with(self._ctx, payload)

    def decode_many(self, payloads: list[bytes]) -> PcmArray:
        """Decode consecutive payloads in order (the same as concatenating ``decode`` results)."""
        parts = [self.decode(payload) for payload in payloads]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def conceal(self, samples: int) -> PcmArray:
        """Silence for lost packets."""
        return np.zeros(samples, np.int16)

    def _decode_with(self, ctx: AudioCodecContext, data: bytes) -> PcmArray:
        if not data:
            raise ParseError(f"{self.label} payload is empty")
        try:
            frames = ctx.decode(av.Packet(data))
        except av.FFmpegError as exc:
            raise ParseError(f"{self.label} payload could not be decoded") from exc
        return frames_to_mono(frames)


class G722Decoder(AvDecoder):
    """G.722 at 64 kbit/s: the RTP clock says 8000 (RFC 3551 §4.5.2) but the audio is 16 kHz."""

    def __init__(self, clock_rate: int = 8000) -> None:
        super().__init__(f"G722/{clock_rate}", 16000, "G722", open_context("g722", 16000))


class G726Decoder(AvDecoder):
    """G.726 ADPCM at 16, 24, 32 or 40 kbit/s (2 to 5 bits per sample).

    RTP's ``G726-<rate>`` packs code words from the least significant bit (RFC 3551 §4.5.4), which is
    ffmpeg's ``g726le``; ``AAL2-G726-32`` packs them from the most significant bit (``g726``).
    """

    def __init__(self, bits: int, *, big_endian: bool = False) -> None:
        if bits not in (2, 3, 4, 5):
            raise ValueError(f"G.726 has 2 to 5 bits per sample, not {bits}")
        self.bits = bits
        kbps = bits * 8
        label = f"AAL2-G726-{kbps}" if big_endian else f"G726-{kbps}"
        ctx = self._context("g726" if big_endian else "g726le", bits)
        super().__init__(f"{label}/8000", 8000, label, ctx)

    def _context(self, codec: str, bits: int) -> AudioCodecContext:
        # The decoder reads its code size from AVCodecContext.bits_per_coded_sample, which PyAV does
        # not expose for audio; the raw G.726 demuxer sets it from its ``code_size`` option, so open a
        # tiny in-memory stream once and keep its (otherwise independent) codec context.
        self._container = av.open(
            io.BytesIO(bytes(64)), format=codec, options={"code_size": str(bits), "sample_rate": "8000"}
        )
        return self._container.streams.audio[0].codec_context


class OpusDecoder(AvDecoder):
    """Opus (RFC 7587): always ``opus/48000/2`` in SDP; decoded to mono at 48 kHz.

    libavcodec's Opus decoders (native and libopus) fix their output rate at 48 kHz whatever rate is
    asked for, so resampling is left to the mixer, which resamples every stream anyway. A stereo
    stream is downmixed by the decoder itself because the context is opened as mono.
    """

    def __init__(self, clock_rate: int = 48000, channels: int = 2) -> None:
        name = f"opus/{clock_rate}" + (f"/{channels}" if channels > 1 else "")
        super().__init__(name, 48000, "opus", open_context("opus", 48000))


class SpeexDecoder(AvDecoder):
    """Speex (RFC 5574): narrowband at 8000, wideband at 16000, ultra-wideband at 32000.

    The payload is one or more bit-packed Speex frames; without a Speex header libavcodec picks the
    mode from the sample rate and reads frames until the bits run out or a terminator appears.
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        if clock_rate not in (8000, 16000, 32000):
            raise ValueError(f"Speex runs at 8000, 16000 or 32000 Hz, not {clock_rate}")
        super().__init__(f"speex/{clock_rate}", clock_rate, "speex", open_context("speex", clock_rate))
