"""What a recording looks like: per-channel waveform peaks and who spoke when, from the audio alone.

The file is decoded once, block by block, into 10 ms frames (each frame's minimum, maximum and mean
square per channel), so memory grows with the frame count, not the sample count. Speech is found per
channel by an energy detector whose threshold follows the channel's own noise floor, with a hangover so
the pauses between syllables do not cut a turn into pieces. Silences (nobody speaking for a while) and
overlaps (two speaking at once) are derived from any set of speakers' segments, so a conference's
per-party segments get them the same way as the two channels of a plain call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from callrec.errors import CallrecError

FRAME_S = 0.01
DEFAULT_BUCKETS = 1200
# the detector: this far above the channel's noise floor, but never below/above these levels (dBFS)
ABOVE_FLOOR_DB = 15.0
MIN_THRESHOLD_DB = -55.0
MAX_THRESHOLD_DB = -30.0
FLOOR_PERCENTILE = 10
# speech goes on this long after the last loud frame (pauses between words), and a burst shorter than
# MIN_SPEECH_S is a click, not speech
HANGOVER_S = 0.3
MIN_SPEECH_S = 0.06
# nobody speaking for longer than this is a silence worth marking
SILENCE_S = 2.0

Segment = tuple[float, float]
Floats = npt.NDArray[np.float64]


class AnalysisError(CallrecError):
    """The recording cannot be decoded."""


@dataclass(frozen=True)
class Analysis:
    """A recording's picture data: ``peaks[c]`` holds (min, max) per bucket in [-1, 1] for channel c,
    ``segments[c]`` the spans (seconds) where channel c speaks."""

    duration_s: float
    rate: int
    peaks: list[list[tuple[float, float]]]
    segments: list[list[Segment]]

    @property
    def channels(self) -> int:
        return len(self.peaks)


@dataclass(frozen=True)
class Levels:
    """Per 10 ms frame and channel (arrays shaped (frames, channels)): min, max and mean square."""

    low: Floats
    high: Floats
    power: Floats
    rate: int
    samples: int

    @property
    def duration_s(self) -> float:
        return self.samples / self.rate if self.rate else 0.0


def analyze(path: Path, buckets: int = DEFAULT_BUCKETS) -> Analysis:
    """Decode ``path`` (MP3 or WAV of any codec PyAV reads) and describe it."""
    levels = read_levels(path)
    return Analysis(
        duration_s=round(levels.duration_s, 3),
        rate=levels.rate,
        peaks=peaks(levels, buckets),
        segments=[speech(levels.power[:, c], FRAME_S, levels.duration_s) for c in range(levels.power.shape[1])],
    )


def read_levels(path: Path) -> Levels:
    """The frame levels of a file, decoded block by block."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            channels, rate = stream.channels, stream.rate
            resampler = av.AudioResampler(format="s16", layout=stream.layout.name, rate=rate)
            return _accumulate(_blocks(container.decode(stream), resampler, channels), rate, channels)
    except (av.error.FFmpegError, IndexError) as exc:
        raise AnalysisError(f"the recording {path.name} cannot be decoded: {exc}") from exc


def _blocks(frames: Iterator[av.AudioFrame], resampler: av.AudioResampler, channels: int) -> Iterator[Floats]:
    for frame in frames:
        for out in resampler.resample(frame):
            yield _float(out.to_ndarray(), channels)
    for out in resampler.resample(None):
        yield _float(out.to_ndarray(), channels)


def _float(data: npt.NDArray[Any], channels: int) -> Floats:
    return np.asarray(data, dtype=np.float64).reshape(-1, channels) / 32768.0


def _accumulate(blocks: Iterator[Floats], rate: int, channels: int) -> Levels:
    """Levels of a stream of (samples, channels) blocks, cut into frames across block edges."""
    size = max(1, round(rate * FRAME_S))
    low: list[Floats] = []
    high: list[Floats] = []
    power: list[Floats] = []
    carry = np.zeros((0, channels))
    samples = 0
    for block in blocks:
        samples += len(block)
        data = np.concatenate([carry, block]) if len(carry) else block
        whole = len(data) // size * size
        if whole:
            framed = data[:whole].reshape(-1, size, channels)
            low.append(framed.min(axis=1))
            high.append(framed.max(axis=1))
            power.append(np.square(framed).mean(axis=1))
        carry = data[whole:]
    if len(carry):  # the last, partial frame
        low.append(carry.min(axis=0, keepdims=True))
        high.append(carry.max(axis=0, keepdims=True))
        power.append(np.square(carry).mean(axis=0, keepdims=True))
    empty = np.zeros((0, channels))
    return Levels(
        low=np.concatenate(low) if low else empty,
        high=np.concatenate(high) if high else empty,
        power=np.concatenate(power) if power else empty,
        rate=rate,
        samples=samples,
    )


def peaks(levels: Levels, buckets: int) -> list[list[tuple[float, float]]]:
    """(min, max) per channel in at most ``buckets`` equal slices of the recording."""
    frames, channels = levels.low.shape
    if frames == 0:
        return [[] for _ in range(channels)]
    starts = np.linspace(0, frames, min(buckets, frames), endpoint=False).astype(np.int64)
    low = np.minimum.reduceat(levels.low, starts, axis=0)
    high = np.maximum.reduceat(levels.high, starts, axis=0)
    return [
        [(round(float(a), 3), round(float(b), 3)) for a, b in zip(low[:, c], high[:, c], strict=True)]
        for c in range(channels)
    ]


def speech(power: Floats, frame_s: float, duration_s: float) -> list[Segment]:
    """Where one channel speaks, from its frames' mean squares."""
    if len(power) == 0:
        return []
    db = 10.0 * np.log10(power + 1e-12)
    floor = float(np.percentile(db, FLOOR_PERCENTILE))
    threshold = min(MAX_THRESHOLD_DB, max(MIN_THRESHOLD_DB, floor + ABOVE_FLOOR_DB))
    loud = np.flatnonzero(db > threshold)
    if len(loud) == 0:
        return []
    # a gap longer than the hangover between loud frames ends a turn
    hang = max(1, round(HANGOVER_S / frame_s))
    breaks = np.flatnonzero(np.diff(loud) > hang)
    firsts = np.concatenate([[loud[0]], loud[breaks + 1]])
    lasts = np.concatenate([loud[breaks], [loud[-1]]])
    out: list[Segment] = []
    for first, last in zip(firsts, lasts, strict=True):
        if (last - first + 1) * frame_s < MIN_SPEECH_S:
            continue
        start = first * frame_s
        end = min(duration_s, (last + 1) * frame_s + HANGOVER_S)
        out.append((round(start, 3), round(end, 3)))
    return out


def _edges(speakers: Sequence[Sequence[Segment]]) -> list[tuple[float, int]]:
    """Each segment's start (+1) and end (-1), ends first at a tie so touching turns do not overlap."""
    edges = [(a, +1) for segs in speakers for a, b in segs if b > a]
    edges += [(b, -1) for segs in speakers for a, b in segs if b > a]
    return sorted(edges, key=lambda e: (e[0], e[1]))


def overlaps(speakers: Sequence[Sequence[Segment]]) -> list[Segment]:
    """Where two or more speakers speak at once."""
    out: list[Segment] = []
    active = 0
    since = 0.0
    for at, step in _edges(speakers):
        before = active
        active += step
        if before < 2 <= active:
            since = at
        elif active < 2 <= before and at > since:
            out.append((round(since, 3), round(at, 3)))
    return out


def silences(speakers: Sequence[Sequence[Segment]], duration_s: float, min_s: float = SILENCE_S) -> list[Segment]:
    """Where nobody speaks for longer than ``min_s``, the start and end of the recording included."""
    out: list[Segment] = []
    active = 0
    quiet_since = 0.0
    for at, step in _edges(speakers):
        if active == 0 and step > 0 and at - quiet_since > min_s:
            out.append((round(quiet_since, 3), round(at, 3)))
        active += step
        if active == 0:
            quiet_since = at
    if active == 0 and duration_s - quiet_since > min_s:
        out.append((round(quiet_since, 3), round(duration_s, 3)))
    return out
