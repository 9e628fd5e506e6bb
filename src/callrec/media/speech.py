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


# a settled frame's level is kept in one byte: -dBFS in 0.5 dB steps (0 … -127 dBFS); NOT_HEARD marks a
# frame with no audio. An 8-hour call is 1.44 M frames: 1.4 MB a party, not 17 MB of float64 + int32
DB_STEP = 0.5
NOT_HEARD = 255
# frames held open (float64 energy, sample count) ahead of the settled ones; grows only if writes reach
# further ahead than this (the mixer's window is 4 s: 200 frames)
OPEN_FRAMES = 1024
# final frames are settled in batches of at least this many (10 s), well inside the open window
SETTLE_FRAMES = 512
# settled frames' codes are kept in chunks of this many (64 KB, 22 minutes), and scanned a chunk at a time:
# small temporaries whatever the call's length, and no doubling array whose outgrown copies are left as
# holes in the heap (peak RSS grew ~2.6 MB an hour of call with one)
SCAN_FRAMES = 1 << 16


class SpeechMeter:
    """Frame energies of one party's audio, placed by output sample position.

    Frames still being written are summed exactly; once the mixer has emitted past a frame
    (:meth:`settle`) no write can reach it again, and its level is kept as a one-byte code, so memory grows
    by one byte per 20 ms of call, not twelve."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame = max(1, int(rate * FRAME_S))
        self._origin = 0  # frame index of _energy[0]: every frame before it is settled
        self._energy = np.zeros(OPEN_FRAMES, np.float64)
        self._count = np.zeros(OPEN_FRAMES, np.int32)
        self._frames = 0  # frames seen so far (one past the last written)
        self._chunks: list[npt.NDArray[np.uint8]] = []  # settled frames' levels, SCAN_FRAMES a chunk
        self._settled = 0

    def add(self, pos: int, pcm: npt.NDArray[np.int16]) -> None:
        """``pcm`` (mono, output rate) placed at output sample ``pos``."""
        n = len(pcm)
        if not n or pos < 0:
            return
        frame = self.frame
        first = pos // frame
        if first < self._origin:  # behind settled frames (the mixer never writes there): keep the rest
            cut = min(n, self._origin * frame - pos)
            pcm, pos, n = pcm[cut:], pos + cut, n - cut
            if not n:
                return
            first = pos // frame
        lead = pos - first * frame
        nframes = (lead + n + frame - 1) // frame
        lo = first - self._origin
        hi = lo + nframes
        if hi > len(self._energy):
            self._grow(hi)
        # the samples' squares summed per frame: a partial frame at either end on its own, the whole frames
        # between them at once; float64 sums of int16 squares are exact (a frame's sum stays far below 2**53)
        energy = self._energy
        x = pcm.astype(np.float64)
        at, k = 0, lo
        if lead:
            at = min(n, frame - lead)
            head = x[:at]
            energy[k] += head @ head
            k += 1
        whole = (n - at) // frame
        if whole:
            rows = x[at : at + whole * frame].reshape(whole, frame)
            energy[k : k + whole] += np.einsum("ij,ij->i", rows, rows)
            at += whole * frame
            k += whole
        if at < n:
            tail = x[at:]
            energy[k] += tail @ tail
        counts = self._count[lo:hi]
        counts += frame
        counts[0] -= lead
        counts[-1] -= nframes * frame - lead - n
        self._frames = max(self._frames, first + nframes)

    def settle(self, upto: int, *, now: bool = False) -> None:
        """Output before sample ``upto`` is final: keep those frames as one-byte levels — once a batch of
        SETTLE_FRAMES is final (or ``now``), so the mixer's every emit does not pay for it."""
        done = min(upto // self.frame, self._frames) - self._origin
        if done <= 0 or (done < SETTLE_FRAMES and not now):
            return
        self._keep(_codes(self._energy[:done], self._count[:done], self.frame))
        # slide the open frames down
        rest = len(self._energy) - done
        self._energy[:rest] = self._energy[done:]
        self._energy[rest:] = 0.0
        self._count[:rest] = self._count[done:]
        self._count[rest:] = 0
        self._origin += done

    def _keep(self, codes: npt.NDArray[np.uint8]) -> None:
        done = 0
        while done < len(codes):
            at = self._settled % SCAN_FRAMES
            if not at:
                self._chunks.append(np.full(SCAN_FRAMES, NOT_HEARD, np.uint8))
            take = min(len(codes) - done, SCAN_FRAMES - at)
            self._chunks[-1][at : at + take] = codes[done : done + take]
            done += take
            self._settled += take

    def _settled_chunks(self) -> list[npt.NDArray[np.uint8]]:
        """The settled frames' codes, chunk by chunk (the last one cut where the settled frames end)."""
        if not self._chunks:
            return []
        last = self._settled - (len(self._chunks) - 1) * SCAN_FRAMES
        return [*self._chunks[:-1], self._chunks[-1][:last]]

    def _grow(self, frames: int) -> None:
        size = max(frames, 2 * len(self._energy))
        self._energy = np.concatenate([self._energy, np.zeros(size - len(self._energy))])
        self._count = np.concatenate([self._count, np.zeros(size - len(self._count), np.int32)])

    def levels(self) -> npt.NDArray[np.float64]:
        """Every frame's level in dBFS (NaN where no audio was heard), settled or not, at DB_STEP resolution."""
        self.settle(self._frames * self.frame, now=True)
        codes = np.concatenate([np.zeros(0, np.uint8), *self._settled_chunks()])
        db = codes.astype(np.float64) * -DB_STEP
        db[codes == NOT_HEARD] = np.nan
        return db

    def segments(self) -> list[list[float]]:
        """``[[from_s, to_s], ...]`` of speech, in output time.

        Worked on the one-byte codes a chunk at a time (a histogram for the noise floor, then the runs), so
        an 8-hour call needs no float array of its 1.44 M frames."""
        self.settle(self._frames * self.frame, now=True)
        chunks = self._settled_chunks()
        histogram = np.zeros(256, np.int64)
        for chunk in chunks:
            histogram += np.bincount(chunk, minlength=256)
        heard = histogram[:NOT_HEARD]
        if not heard.any():
            return []
        floor = _floor_db(heard, 20)
        # a frame is speech when its level -code * DB_STEP is above the threshold: code < limit
        limit = -max(ABSOLUTE_FLOOR_DB, floor + ABOVE_FLOOR_DB) / DB_STEP
        # runs of speech frames [first, end), a pause of up to `bridge` frames bridged as each run starts (so
        # only the merged turns are ever held: an 8-hour call's every run of frames would be ~100k lists)
        bridge = int(round(BRIDGE_S / FRAME_S))
        merged: list[list[int]] = []
        was = False
        for lo, chunk in zip(range(0, self._settled, SCAN_FRAMES), chunks, strict=True):
            active = chunk < limit
            edges = np.flatnonzero(active[1:] != active[:-1]) + 1
            flips = ([0] if bool(active[0]) != was else []) + edges.tolist()
            for at in flips:
                if was:
                    merged[-1][1] = lo + at
                elif not merged or lo + at - merged[-1][1] > bridge:
                    merged.append([lo + at, lo + at])
                was = not was
            if was:
                merged[-1][1] = lo + len(active)
        shortest = int(round(MIN_SEGMENT_S / FRAME_S))
        return [[round(a * FRAME_S, 2), round(b * FRAME_S, 2)] for a, b in merged if b - a >= shortest]


def _floor_db(histogram: npt.NDArray[np.int64], q: float) -> float:
    """``np.percentile`` of the heard frames' levels (dBFS = -code * DB_STEP), from the codes' histogram."""
    n = int(histogram.sum())
    at = (n - 1) * q / 100.0
    lo = int(at)
    hi = min(lo + 1, n - 1)
    # ascending dB is descending code: the k-th lowest level is the k-th highest code
    descending = np.cumsum(histogram[::-1])
    code_lo = len(histogram) - 1 - int(np.searchsorted(descending, lo, side="right"))
    code_hi = len(histogram) - 1 - int(np.searchsorted(descending, hi, side="right"))
    a, b, t = code_lo * -DB_STEP, code_hi * -DB_STEP, at - lo
    # numpy's lerp: from the nearer end, so t = 0 and t = 1 give the values themselves exactly
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _codes(energy: npt.NDArray[np.float64], count: npt.NDArray[np.int32], frame: int) -> npt.NDArray[np.uint8]:
    """Frames' one-byte levels: -dBFS in DB_STEP steps, NOT_HEARD for a frame with no samples."""
    heard = count > 0
    power = np.zeros(len(energy))
    power[heard] = energy[heard] / count[heard] / _FULL_SCALE_SQ
    db = 10 * np.log10(np.maximum(power, 1e-12))
    codes = np.minimum(np.rint(-db / DB_STEP), NOT_HEARD - 1).astype(np.uint8)
    codes[~heard] = NOT_HEARD
    return codes
