"""Who spoke when: each party's speaking segments, measured on its own decoded audio while mixing.

The mixer sees every party separately before the voices are summed, so this works for a conference as
well as for a two-party call. Energy is kept per 20 ms frame; at the end a frame counts as speech when it
is well above the party's own noise floor (and above an absolute floor), short gaps are bridged and
blips dropped.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FRAME_S = 0.02
# a frame quieter than this (dBFS) is never speech, whatever the noise floor
ABSOLUTE_FLOOR_DB = -50.0
# speech is this far above the party's noise floor (its quiet frames' 20th percentile)
ABOVE_FLOOR_DB = 12.0
# pauses shorter than this inside a turn do not end it
BRIDGE_S = 0.4
# a burst shorter than this is a click or a cough, not speech
MIN_SEGMENT_S = 0.15
_FULL_SCALE_SQ = 32768.0**2


class SpeechMeter:
    """Frame energies of one party's audio, placed by output sample position."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame = max(1, int(rate * FRAME_S))
        self._energy = np.zeros(1024, np.float64)
        self._count = np.zeros(1024, np.int32)
        self._frames = 0

    def add(self, pos: int, pcm: npt.NDArray[np.int16]) -> None:
        """``pcm`` (mono, output rate) placed at output sample ``pos``."""
        n = len(pcm)
        if not n or pos < 0:
            return
        frame = self.frame
        first, last = pos // frame, (pos + n - 1) // frame
        self._grow(last + 1)
        # one pass: the samples' squares laid on whole frames (zeros outside them), summed per frame; float64
        # sums of int16 squares are exact (a frame's sum stays far below 2**53)
        lead = pos - first * frame
        span = (last - first + 1) * frame
        square = np.zeros(span, np.float64)
        wide = square[lead : lead + n]
        np.multiply(pcm, pcm, out=wide, dtype=np.float64)
        self._energy[first : last + 1] += square.reshape(-1, frame).sum(axis=1)
        counts = self._count[first : last + 1]
        counts += frame
        counts[0] -= lead
        counts[-1] -= span - lead - n
        self._frames = max(self._frames, last + 1)

    def _grow(self, frames: int) -> None:
        if frames <= len(self._energy):
            return
        size = max(frames, 2 * len(self._energy))
        self._energy = np.concatenate([self._energy, np.zeros(size - len(self._energy))])
        self._count = np.concatenate([self._count, np.zeros(size - len(self._count), np.int32)])

    def segments(self) -> list[list[float]]:
        """``[[from_s, to_s], ...]`` of speech, in output time."""
        n = self._frames
        if n == 0:
            return []
        count = self._count[:n]
        heard = count > 0
        if not heard.any():
            return []
        power = np.zeros(n)
        power[heard] = self._energy[:n][heard] / count[heard] / _FULL_SCALE_SQ
        db = 10 * np.log10(np.maximum(power, 1e-12))
        floor = percentile(db[heard], 20)
        active = heard & (db > max(ABSOLUTE_FLOOR_DB, floor + ABOVE_FLOOR_DB))
        return _runs(active, FRAME_S)


def _runs(active: npt.NDArray[np.bool_], frame_s: float) -> list[list[float]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    runs = [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]
    bridge = int(round(BRIDGE_S / frame_s))
    merged: list[list[int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] <= bridge:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    shortest = int(round(MIN_SEGMENT_S / frame_s))
    return [[round(a * frame_s, 2), round(b * frame_s, 2)] for a, b in merged if b - a >= shortest]


def percentile(values: npt.NDArray[np.float64], q: float) -> float:
    """``np.percentile(values, q)`` (its default, linear method), without the import of ``numpy.ma`` that
    ``np.percentile`` pulls in on first use (~8 ms of every ``callrec mix``)."""
    n = len(values)
    at = (n - 1) * q / 100.0
    lo = int(at)
    hi = min(lo + 1, n - 1)
    part = np.partition(values, (lo, hi)) if n > 1 else values
    a, b, t = float(part[lo]), float(part[hi]), at - lo
    # numpy's lerp: from the nearer end, so t = 0 and t = 1 give the values themselves exactly
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t

