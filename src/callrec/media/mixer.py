"""The call mixer: places every party's decoded audio on one output timeline and streams it to a sink.

t = 0 of the output is the earliest media of the call as placed, not the first packet to arrive: a stream
whose first packets came late in a burst is placed before the call's first arrival, so positions count
from an origin ``LOOKBACK_S`` earlier, and the output starts at the earliest sample written once emitting
reaches it (nothing arriving later can be placed before it then: it would be late for the jitter buffer).

Packets may reach the capture file later than they arrived: the live recorder holds a stream from an
unadvertised source back (up to 1 s) until its latch is decided, then writes it with its true arrival
times. Such a packet is placed by its arrival time like any other, so output is emitted only
``JITTER_DELAY_S + COMMIT_LAG_S`` (1.6 s) behind the capture clock: a stream written up to 1.5 s late in
file order loses nothing (what is written before the emitted point cannot be placed any more).

Memory is bounded by a fixed window of output (``BUFFER_S``) plus each stream's small jitter buffer, so a
call of any length mixes in the same memory. Layout: two parties → caller left, callee right; three or
more (a conference) → every voice in both channels; mono output → every voice in the one channel. Sums
go through a limiter, so mixed voices never clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from callrec.errors import ParseError, UnsupportedCodec
from callrec.media.codecs import decoder_for
from callrec.media.codecs.base import Decoder, PcmArray
from callrec.media.lane import LaneRun
from callrec.media.playout import Run
from callrec.media.resample import StreamResampler
from callrec.media.speech import SpeechMeter
from callrec.media.streamstats import StreamStats
from callrec.media.timeline import SsrcTimeline
from callrec.models import CallInfo, RtpMap

# how much output is released per step: a capture chunk read at once (seconds of packets) is released in
# steps of this size; the output is the same for any step, larger ones cost less (bench/mix.py: 0.5 s
# → 1 s saved ~4 % of a 20-minute mix), and step + COMMIT_LAG_S stays well inside BUFFER_S
STEP_S = 1.0
# output is emitted this far behind the release point: resamplers hand audio over a little late
COMMIT_LAG_S = 1.2
# the output window held in memory
BUFFER_S = 4.0
# the window's buffer has room for this many windows more, so emitting moves it along and only once in so
# many windows is what it holds copied back to the front
SLIDE_WINDOWS = 4
# how far before the call's first arrival media may be placed (a stream whose first packets came late)
LOOKBACK_S = 2.0
# no sample written yet
_NONE = 1 << 62
# the limiter works on blocks of this length
LIMITER_BLOCK_S = 0.02
# after a peak the limiter's gain comes back at this rate (per block)
LIMITER_RELEASE = 0.05
FULL_SCALE = 32767
# the limiter brings peaks down to this, a little under full scale, so nothing sits at the rail
LIMITER_CEILING = 32000


class Sink(Protocol):
    """Where mixed audio goes: blocks of interleaved int16 samples shaped (frames, channels)."""

    def write(self, block: npt.NDArray[np.int16]) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class MixResult:
    """What a finished mix reports."""

    duration_s: float
    sample_rate: int
    channels: int
    streams: list[StreamStats] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # capture time (epoch seconds) of the output's t = 0 (the earliest media as placed); None when no
    # packet came
    t0: float | None = None
    # each party's speaking segments, [[from_s, to_s], ...] in output time
    speech: dict[str, list[list[float]]] = field(default_factory=dict)

    def streams_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.streams]


def channel_layout(info: CallInfo, channels: int, left: frozenset[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Which output channels each party's voice goes to; ``left`` (stereo only) names the parties for the
    left channel and sends every other party right, whatever the roles (stitching puts the customer left)."""
    if channels == 1:
        return {p.id: (0,) for p in info.parties}
    if left is not None:
        return {p.id: (0,) if p.id in left else (1,) for p in info.parties}
    callers = [p.id for p in info.parties if p.role == "caller"]
    callees = [p.id for p in info.parties if p.role == "callee"]
    if len(info.parties) <= 2 and len(callers) <= 1 and len(callees) <= 1:
        return {**{p: (0,) for p in callers}, **{p: (1,) for p in callees}}
    return {p.id: tuple(range(channels)) for p in info.parties}


class _Source:
    """One SSRC of one party, with its decoders and resamplers."""

    __slots__ = ("timeline", "channels", "decoders", "resamplers", "cursor", "speech")

    def __init__(self, timeline: SsrcTimeline, channels: tuple[int, ...], speech: SpeechMeter) -> None:
        self.timeline = timeline
        self.channels = channels
        self.speech = speech
        self.decoders: dict[str, Decoder | None] = {}
        self.resamplers: dict[int, StreamResampler] = {}
        self.cursor = -(1 << 62)


class CallMixer:
    """Mixes one call. Feed packets with ``push`` in arrival order, move time with ``advance``, ``finish``."""

    def __init__(
        self, info: CallInfo, sink: Sink, *, rate: int = 8000, channels: int = 2, left: frozenset[str] | None = None
    ) -> None:
        self.info = info
        self.sink = sink
        self.rate = rate
        self.channels = channels
        self.origin: float | None = None  # capture time (epoch seconds) of output position 0
        self._layout = channel_layout(info, channels, left)
        self._default_channels = (1,) if left is not None and channels == 2 else tuple(range(channels))
        self._speech: dict[str, SpeechMeter] = {}
        self._sources: dict[tuple[str, int], _Source] = {}
        self._cap = int(BUFFER_S * rate)
        # channel-major, so a party's samples are added to contiguous memory; the window slides along
        # SLIDE_WINDOWS windows of room before what is left of it moves back to the front (not at every emit)
        self._buf = np.zeros((channels, self._cap * (SLIDE_WINDOWS + 1)), np.int32)
        self._base = 0  # output position of the window's start; everything before it was emitted
        self._off = 0  # where the window starts in _buf: _buf[:, _off] holds output position _base
        self._first = _NONE  # the earliest position written
        self._start: int | None = None  # the position of t = 0, once output began
        self._released = 0.0
        self._max_end = 0
        self._gain = 1.0
        self._step = STEP_S * rate
        self._lag = COMMIT_LAG_S * rate
        self._delay = 0.0
        self.warnings: list[str] = []

    # feeding
    def timeline(self, party: str, ssrc: int, arrival: float) -> SsrcTimeline:
        """The timeline of one SSRC of ``party``, made on its first packet (the call's first fixes the
        origin of positions, ``LOOKBACK_S`` before it)."""
        if self.origin is None:
            self.origin = arrival - LOOKBACK_S
        source = self._sources.get((party, ssrc))
        if source is None:
            channels = self._layout.get(party, self._default_channels)
            timeline = SsrcTimeline(ssrc, party, self.rate)
            meter = self._speech.setdefault(party, SpeechMeter(self.rate))
            source = self._sources[(party, ssrc)] = _Source(timeline, channels, meter)
            self._delay = timeline.jitter_delay
        return source.timeline

    def push(
        self,
        arrival: float,
        party: str,
        ssrc: int,
        seq: int,
        ts: int,
        pt: int,
        payload: bytes,
        codec: RtpMap | None,
    ) -> None:
        """One RTP packet from ``party`` that arrived at ``arrival`` (seconds, capture clock)."""
        timeline = self.timeline(party, ssrc, arrival)
        assert self.origin is not None
        timeline.push((arrival - self.origin) * self.rate, seq, ts, pt, payload, codec)

    def advance(self, now: float) -> None:
        """Release and emit everything the capture clock ``now`` has made final."""
        if self.origin is None:
            return
        self._release_until((now - self.origin) * self.rate - self._delay)

    def finish(self) -> MixResult:
        """Release everything left, close the sink and report."""
        self._release_until(float("inf"))
        for source in self._sources.values():
            for resampler in source.resamplers.values():
                for pos, pcm in resampler.flush():
                    self._write(source, pos, pcm)
            self._max_end = max(self._max_end, int(source.timeline.signal_end))
        self._emit(self._max_end, final=True)
        self.sink.close()
        stats = [s.timeline.final_stats() for s in self._sources.values()]
        for s in stats:
            for name in s.unsupported:
                self.warnings.append(f"stream {s.ssrc:#010x} of party {s.party}: no decoder for {name}")
        start = self._start or 0
        shift = start / self.rate
        speech = {
            party: [[max(0.0, round(a - shift, 2)), round(b - shift, 2)] for a, b in meter.segments() if b > shift]
            for party, meter in self._speech.items()
        }
        t0 = None if self.origin is None else self.origin + shift
        duration = max(0, self._max_end - start) / self.rate
        return MixResult(duration, self.rate, self.channels, stats, self.warnings, t0, speech)

    # the timeline
    def _release_until(self, target: float) -> None:
        sources = list(self._sources.values())
        while self._released < target:
            upcoming = min((s.timeline.next_position() for s in sources), default=float("inf"))
            step = min(target, self._released + self._step)
            if upcoming >= step:
                # nothing waits before this step: jump ahead to the next packet
                self._released = min(target, max(step, upcoming))
                continue
            for source in sources:
                self._render(source, source.timeline.release(step))
            self._released = step
            self._emit(min(step - self._lag, self._max_end))

    def _render(self, source: _Source, runs: list[Run | LaneRun]) -> None:
        for run in runs:
            if type(run) is LaneRun:
                # a run from the timeline's lane: one payload length, pieces known
                decoder = self._decoder(source, run.codec, run.pt)
                self._max_end = max(self._max_end, run.last_position())
                if decoder is None:
                    self._first = min(self._first, run.pieces()[0][0])  # silence, but media: t = 0 counts it
                    continue
                if decoder.name in ("PCMA/8000", "PCMU/8000"):
                    self._render_lane_g711(source, decoder, run)
                    continue
                positions, payloads = run.lists()
            else:
                pt, codec, positions, payloads = cast(Run, run)
                decoder = self._decoder(source, codec, pt)
                self._max_end = max(self._max_end, positions[-1])
                if decoder is None:
                    self._first = min(self._first, positions[0])
                    continue
                if decoder.name in ("PCMA/8000", "PCMU/8000"):
                    self._render_g711(source, decoder, positions, payloads)
                    continue
            for pos, payload in zip(positions, payloads, strict=True):
                try:
                    pcm = decoder.decode(payload)
                except ParseError:
                    source.timeline.stats.undecodable += 1
                    continue
                self._place(source, decoder, pos, pcm)

    def _render_g711(self, source: _Source, decoder: Decoder, positions: list[int], payloads: list[bytes]) -> None:
        # one byte per sample, so one table lookup serves the whole run
        pcm = decoder.decode_many(payloads)
        start = end = positions[0]
        at = 0
        for pos, payload in zip(positions, payloads, strict=True):
            if pos != end:
                # not contiguous (loss, a timestamp jump): place what came before, go on from here
                self._place(source, decoder, start, pcm[at : at + end - start])
                at += end - start
                start = pos
            end = pos + len(payload)
        self._place(source, decoder, start, pcm[at:])

    def _render_lane_g711(self, source: _Source, decoder: Decoder, run: LaneRun) -> None:
        # what _render_g711 does, with the pieces already known
        width = run.plan.payloads.shape[1]
        pcm = run.decoded(decoder)
        for pos, first, end in run.pieces():
            self._place(source, decoder, pos, pcm[first * width : end * width])

    def _decoder(self, source: _Source, codec: RtpMap | None, pt: int) -> Decoder | None:
        name = codec.name if codec is not None else f"PT{pt}"
        if name in source.decoders:
            return source.decoders[name]
        decoder: Decoder | None = None
        if codec is None:
            source.timeline.stats.unsupported.append(f"payload type {pt} (no rtpmap)")
        else:
            try:
                decoder = decoder_for(codec.encoding, codec.clock_rate, codec.channels, codec.fmtp)
            except UnsupportedCodec:
                source.timeline.stats.unsupported.append(name)
        source.decoders[name] = decoder
        return decoder

    def _place(self, source: _Source, decoder: Decoder, pos: int, pcm: PcmArray) -> None:
        if decoder.sample_rate == self.rate:
            self._write(source, pos, pcm)
            return
        resampler = source.resamplers.get(decoder.sample_rate)
        if resampler is None:
            resampler = source.resamplers[decoder.sample_rate] = StreamResampler(
                decoder.sample_rate, self.rate
            )
        for at, chunk in resampler.process(pos, pcm):
            self._write(source, at, chunk)

    # the output window
    def _write(self, source: _Source, pos: int, pcm: PcmArray) -> None:
        end = pos + len(pcm)
        start = max(pos, source.cursor, self._base)
        if end <= start:
            return
        if start > pos:
            pcm = pcm[start - pos :]
        source.cursor = end
        if start < self._first:
            self._first = start
        if end - self._base > self._cap:
            self._emit(end - self._cap, final=True)
        lo, hi = start - self._base + self._off, end - self._base + self._off
        source.speech.add(start, pcm)
        for ch in source.channels:
            self._buf[ch, lo:hi] += pcm
        if end > self._max_end:
            self._max_end = end

    def _emit(self, upto: float, final: bool = False) -> None:
        """Send the output before ``upto`` to the sink. The first time, t = 0 is fixed at the earliest sample
        written: until emitting reaches it (or ``final``: the window is full, or the call ended), wait."""
        upto = int(upto)
        if self._start is None:
            if upto <= self._first and not final:
                return
            self._begin()
        while self._base < upto:
            k = min(upto - self._base, self._cap)
            off = self._off
            window = self._buf[:, off : off + k]
            self.sink.write(self._limit(window))
            window[:] = 0
            self._slide(k)
        for meter in self._speech.values():
            meter.settle(self._base)  # nothing is written behind the window: those frames are final

    def _begin(self) -> None:
        """Fix t = 0 at the earliest sample written (at the call's first arrival when none was) and drop
        the silence before it."""
        start = self._start = max(self._base, self._first if self._first != _NONE else int(LOOKBACK_S * self.rate))
        drop = min(start - self._base, self._cap)
        if drop > 0:
            self._buf[:, self._off : self._off + drop] = 0
            self._slide(drop)

    def _slide(self, k: int) -> None:
        """The window's first ``k`` samples (already cleared) are behind it now. Everything in the buffer
        outside the window is zero; when the window would run past the buffer's end, what it holds moves
        back to the front."""
        self._base += k
        self._off += k
        if self._off + self._cap > self._buf.shape[1]:
            # only [base, max_end) can hold audio, and none of it lies past the buffer's end
            buf, off = self._buf, self._off
            live = max(0, min(self._max_end - self._base, self._cap, buf.shape[1] - off))
            if live:
                buf[:, :live] = buf[:, off : off + live]
                buf[:, max(live, off) : off + live] = 0
            self._off = 0

    def _limit(self, window: npt.NDArray[np.int32]) -> npt.NDArray[np.int16]:
        """The channel-major sums in ``window`` (channels, frames) as interleaved int16 (frames, channels)."""
        channels, frames = window.shape
        out = np.empty((frames, channels), np.int16)
        in_range = not frames or (int(window.max()) <= FULL_SCALE and int(window.min()) >= -FULL_SCALE)
        if self._gain >= 1.0 and in_range:
            for ch in range(channels):
                out[:, ch] = window[ch]  # one contiguous run per channel (a transposed copy goes sample by sample)
            return out
        # per-block gain: drops at once to what the block's peak needs, comes back slowly
        size = max(1, int(LIMITER_BLOCK_S * self.rate))
        for lo in range(0, frames, size):
            part = window[:, lo : lo + size].astype(np.float32)
            peak = float(np.abs(part).max(initial=0))
            need = LIMITER_CEILING / peak if peak > LIMITER_CEILING else 1.0
            self._gain = min(need, self._gain + LIMITER_RELEASE)
            out[lo : lo + size] = np.clip(np.rint(part * self._gain), -FULL_SCALE, FULL_SCALE).T
        return out
