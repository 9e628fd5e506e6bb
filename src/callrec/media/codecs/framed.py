"""Fixed-size-frame codecs on PyAV: GSM 06.10, G.729 (Annex A/B) and iLBC.

RTP carries any number of whole frames per packet for these (RFC 3551 §4.5.8 and §4.5.6, RFC 3952),
so the payload length alone says whether a packet is sound; checking it here gives an exact error
instead of whatever libavcodec makes of a torn frame.
"""

from __future__ import annotations

import numpy as np
from av.audio.codeccontext import AudioCodecContext

from callrec.errors import ParseError
from callrec.media.codecs.base import PcmArray
from callrec.media.codecs.pyav import AvDecoder, open_context

__all__ = ["G729Decoder", "GsmDecoder", "IlbcDecoder"]

GSM_FRAME_BYTES = 33  # 260 bits + the 4-bit 0xD signature, 20 ms
G729_FRAME_BYTES = 10  # 80 bits, 10 ms
G729_SID_BYTES = 2  # Annex B comfort-noise update, only ever last in a packet
G729_FRAME_SAMPLES = 80
ILBC_FRAME_BYTES = {20: 38, 30: 50}  # mode (ms) -> bytes per frame
ILBC_BIT_RATE = {20: 15200, 30: 13333}  # libavcodec's iLBC decoder picks its mode from bit_rate


class GsmDecoder(AvDecoder):
    """GSM 06.10 full rate: 33-byte frames of 160 samples, several per packet allowed."""

    def __init__(self, clock_rate: int = 8000) -> None:
        super().__init__(f"GSM/{clock_rate}", 8000, "GSM", open_context("gsm", 8000))

    def decode(self, payload: bytes) -> PcmArray:
        """Decode every frame of the payload (libavcodec walks a multi-frame packet by itself)."""
        if not payload or len(payload) % GSM_FRAME_BYTES:
            raise ParseError(f"GSM payload of {len(payload)} bytes is not a whole number of frames")
        return self._decode_with(self._ctx, payload)


class G729Decoder(AvDecoder):
    """G.729 / G.729A: 10-byte frames, optionally ending with a 2-byte Annex B SID frame.

    libavcodec cannot decode SID frames, so a SID frame stands for one frame (10 ms) of silence;
    the quiet stretch that follows it has no packets at all and becomes silence in the mixer.
    """

    def __init__(self, clock_rate: int = 8000) -> None:
        super().__init__(f"G729/{clock_rate}", 8000, "G729", open_context("g729", 8000))

    def decode(self, payload: bytes) -> PcmArray:
        """Decode the speech frames and turn a trailing SID frame into 10 ms of silence."""
        speech_bytes = len(payload) - len(payload) % G729_FRAME_BYTES
        sid_bytes = len(payload) - speech_bytes
        if not payload or sid_bytes not in (0, G729_SID_BYTES):
            raise ParseError(f"G729 payload of {len(payload)} bytes is not a whole number of frames")
        speech = self._decode_with(self._ctx, payload[:speech_bytes]) if speech_bytes else None
        if not sid_bytes:
            assert speech is not None
            return speech
        silence = np.zeros(G729_FRAME_SAMPLES, np.int16)
        return silence if speech is None else np.concatenate([speech, silence])


class IlbcDecoder(AvDecoder):
    """iLBC (RFC 3951/3952): 20 ms frames of 38 bytes or 30 ms frames of 50 bytes.

    The mode comes from the SDP ``mode=20|30`` fmtp parameter when given; without it each payload's
    length decides (a length both sizes divide, a multiple of 950 bytes, is read as the RFC 3952
    default of 30 ms). Each mode keeps its own context so its state survives mode guesses.
    """

    def __init__(self, clock_rate: int = 8000, mode: int | None = None) -> None:
        if mode is not None and mode not in ILBC_FRAME_BYTES:
            raise ValueError(f"iLBC mode is 20 or 30, not {mode}")
        self.mode = mode
        self._contexts: dict[int, AudioCodecContext] = {}
        super().__init__(f"iLBC/{clock_rate}", 8000, "iLBC", self._context(mode or 30))

    def _context(self, mode: int) -> AudioCodecContext:
        if mode not in self._contexts:
            self._contexts[mode] = open_context("ilbc", 8000, bit_rate=ILBC_BIT_RATE[mode])
        return self._contexts[mode]

    def _mode_of(self, payload: bytes) -> int:
        size = len(payload)
        if self.mode is not None:
            if size and size % ILBC_FRAME_BYTES[self.mode] == 0:
                return self.mode
        elif size and size % ILBC_FRAME_BYTES[30] == 0:
            return 30
        elif size and size % ILBC_FRAME_BYTES[20] == 0:
            return 20
        raise ParseError(f"iLBC payload of {size} bytes is not a whole number of frames")

    def decode(self, payload: bytes) -> PcmArray:
        """Decode every frame of the payload with the context of its mode."""
        mode = self._mode_of(payload)
        ctx, size = self._context(mode), ILBC_FRAME_BYTES[mode]
        if len(payload) == size:
            return self._decode_with(ctx, payload)
        # libavcodec's iLBC decoder takes the first frame of a packet and drops the rest
        parts = [self._decode_with(ctx, payload[i : i + size]) for i in range(0, len(payload), size)]
        return np.concatenate(parts)
