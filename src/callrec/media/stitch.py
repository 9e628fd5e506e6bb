"""Stitching: several calls' stereo audio on one timeline, with the waits between them cut short.

Each piece is one call's audio (int16, customer left, employees right) and the capture time of its
first sample. Pieces keep their real order and, where they overlap (a consult during a transfer), their
real relative timing; a silence between pieces longer than ``pause_s`` (hold, queue) is cut to
``pause_s``. Output is produced a block at a time from sources read a block at a time, so an
interaction of any length stitches in the same memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from callrec.errors import OutputError
from callrec.media.mixer import Sink

# what a hold or queue wait between two calls becomes
PAUSE_S = 1.0
# output is made this many seconds at a time
BLOCK_S = 1.0
FULL_SCALE = 32767

# how a piece's two channels reach the output: as they are, swapped (the customer was the callee of a
# caller-left recording), or one mix in both (a stored conference recording, where voices are not apart)
Layout = Literal["keep", "swap", "both"]


class PcmSource(Protocol):
    """Stereo int16 audio read front to back: ``frames`` in all, ``read(n)`` gives the next ``n`` (fewer at the end)."""

    frames: int

    def read(self, n: int) -> npt.NDArray[np.int16]: ...

    def close(self) -> None: ...


class ArraySource:
    """A source over audio already in memory (tests, short pieces)."""

    def __init__(self, pcm: npt.NDArray[np.int16]) -> None:
        self._pcm = pcm.reshape(len(pcm), -1)
        self.frames = len(pcm)
        self._at = 0

    def read(self, n: int) -> npt.NDArray[np.int16]:
        block = self._pcm[self._at : self._at + n]
        self._at += len(block)
        return block

    def close(self) -> None:
        self._at = self.frames


class WavSource:
    """A 16-bit stereo WAV file, read a block at a time with libsndfile."""

    def __init__(self, path: Path, rate: int) -> None:
        import soundfile

        try:
            self._file = soundfile.SoundFile(path)
        except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
            raise OutputError(f"cannot read {path.name}: {exc}") from exc
        if self._file.samplerate != rate:
            self._file.close()
            raise OutputError(f"{path.name} is at {self._file.samplerate} Hz, the stitch at {rate} Hz")
        self.frames = int(self._file.frames)

    def read(self, n: int) -> npt.NDArray[np.int16]:
        data: npt.NDArray[np.int16] = self._file.read(n, dtype="int16", always_2d=True)
        return data

    def close(self) -> None:
        self._file.close()


@dataclass(slots=True)
class Piece:
    """One call's audio and the capture time (epoch seconds) of its first sample."""

    source: PcmSource
    started_at: float
    layout: Layout = "keep"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a piece went: its first output sample and its length, in samples."""

    start: int
    frames: int

    def seconds(self, rate: int) -> tuple[float, float]:
        return self.start / rate, (self.start + self.frames) / rate


def place(pieces: Sequence[tuple[float, int]], rate: int, pause_s: float = PAUSE_S) -> list[Placement]:
    """Positions on the stitched timeline of pieces given as (start epoch s, frames), in the given order.

    Time is cut only where nothing plays: a gap after everything so far has ended, longer than
    ``pause_s``, shrinks to ``pause_s``. Overlapping pieces keep their real offsets to each other.
    """
    order = sorted(range(len(pieces)), key=lambda i: pieces[i][0])
    out: list[Placement | None] = [None] * len(pieces)
    cut = 0.0  # seconds removed so far
    first = pieces[order[0]][0] if order else 0.0
    busy_until: float | None = None  # real time the audio placed so far ends
    for i in order:
        start, frames = pieces[i]
        if busy_until is not None and start > busy_until + pause_s:
            cut += start - busy_until - pause_s
        at = max(0, round((start - first - cut) * rate))
        out[i] = Placement(at, frames)
        end = start + frames / rate
        busy_until = end if busy_until is None else max(busy_until, end)
    return [p for p in out if p is not None]


def stitch(
    pieces: Sequence[Piece], sink: Sink, *, rate: int, channels: int = 2, pause_s: float = PAUSE_S
) -> list[Placement]:
    """Write the pieces on their stitched timeline to ``sink`` (closed at the end); returns each placement.

    Where pieces overlap their samples add up (clipped at full scale). Mono output takes the average of
    left and right.
    """
    placements = place([(p.started_at, p.source.frames) for p in pieces], rate, pause_s)
    total = max((p.start + p.frames for p in placements), default=0)
    block = max(1, int(BLOCK_S * rate))
    order = sorted(range(len(pieces)), key=lambda i: placements[i].start)
    active: list[int] = []
    nxt = 0
    try:
        for lo in range(0, total, block):
            hi = min(total, lo + block)
            while nxt < len(order) and placements[order[nxt]].start < hi:
                active.append(order[nxt])
                nxt += 1
            acc = np.zeros((hi - lo, 2), np.int32)
            for i in list(active):
                where = placements[i]
                a, b = max(lo, where.start), min(hi, where.start + where.frames)
                if b > a:
                    acc[a - lo : b - lo] += _routed(_exactly(pieces[i].source, b - a), pieces[i].layout)
                if where.start + where.frames <= hi:
                    active.remove(i)
                    pieces[i].source.close()
            out = np.clip(acc, -FULL_SCALE, FULL_SCALE)
            if channels == 1:
                out = (out.sum(axis=1, keepdims=True) // 2).astype(np.int32)
            sink.write(out.astype(np.int16))
    finally:
        for piece in pieces:
            piece.source.close()
    sink.close()
    return placements


def _exactly(source: PcmSource, n: int) -> npt.NDArray[np.int32]:
    """The next ``n`` frames as stereo int32; a source shorter than it said is padded with silence."""
    data = source.read(n)
    if data.ndim == 1 or data.shape[1] == 1:
        data = np.repeat(data.reshape(-1, 1), 2, axis=1)
    out = np.zeros((n, 2), np.int32)
    out[: len(data)] = data[:n, :2]
    return out


def _routed(block: npt.NDArray[np.int32], layout: Layout) -> npt.NDArray[np.int32]:
    if layout == "swap":
        return block[:, ::-1]
    if layout == "both":
        mono = block.sum(axis=1, keepdims=True) // 2
        return np.repeat(mono, 2, axis=1)
    return block
