"""Streaming resampling of one stream's decoded audio onto the output rate, keeping its position."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from callrec.media.codecs.base import PcmArray

if TYPE_CHECKING:
    import soxr

# a gap shorter than this is fed to the resampler as silence; a longer one restarts it
MAX_BRIDGED_GAP_S = 1.0

Chunk = tuple[int, PcmArray]


class StreamResampler:
    """Turns (output position, samples at ``in_rate``) runs into (output position, samples at ``out_rate``)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._ratio = out_rate / in_rate
        self._tolerance = out_rate * 0.002
        self._stream: soxr.ResampleStream | None = None
        self._next = 0.0  # output position the next input sample belongs at
        self._cursor = 0  # output position of the next resampled sample

    def process(self, pos: int, pcm: PcmArray) -> list[Chunk]:
        """Resample one run of samples that belongs at output position ``pos``."""
        out: list[Chunk] = []
        gap = pos - self._next
        if self._stream is not None and -self._tolerance <= gap <= self._tolerance:
            pass
        elif self._stream is not None and 0 < gap <= MAX_BRIDGED_GAP_S * self.out_rate:
            silence = np.zeros(int(round(gap / self._ratio)), np.int16)
            out += self._feed(silence)
            self._next = pos
        else:
            out += self.flush()
            import soxr  # only a call that needs resampling pays for loading it (~0.04 CPU-s)

            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="int16")
            self._cursor = pos
            self._next = pos
        out += self._feed(pcm)
        return out

    def _feed(self, pcm: PcmArray, last: bool = False) -> list[Chunk]:
        assert self._stream is not None
        self._next += len(pcm) * self._ratio
        done = self._stream.resample_chunk(pcm, last=last)
        if len(done) == 0:
            return []
        chunk = (self._cursor, np.asarray(done, dtype=np.int16))
        self._cursor += len(done)
        return [chunk]

    def flush(self) -> list[Chunk]:
        """Drain what the resampler still holds (end of stream, or before a restart)."""
        if self._stream is None:
            return []
        out = self._feed(np.zeros(0, np.int16), last=True)
        self._stream = None
        return out
