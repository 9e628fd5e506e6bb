"""``callrec mix``: a capture (or a tape) in, one recording per call out.

Reads the capture once, in order: SIP builds the dialogs and says where each party receives media, RTP
sent there goes to that call's mixer, and each mixer streams its recording to disk as it goes.

Most of a capture is plain RTP of streams already known, so a classic pcap is read a chunk at a time
and such packets go through a vectorised lane (numpy, a whole run of one stream at once) with exactly
the per-packet path's results; every other packet takes the per-packet path, in capture order.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callrec.errors import OutputError
from callrec.files import rtpengine, tape
from callrec.files.pcap import CaptureReader, UdpBlock
from callrec.media.encode import Mp3Writer, WavWriter, open_writer
from callrec.media.feed import StreamFeed
from callrec.media.mixer import CallMixer
from callrec.media.timeline import SsrcTimeline
from callrec.models import STATIC_PAYLOAD_TYPES, CallInfo, RtpMap
from callrec.wire.dialogs import Binding, Dialog, DialogTracker, looks_like_sip
from callrec.wire.netparse import Datagram
from callrec.wire.rtp import payload_offset
from callrec.wire.sip import StreamFramer

_RTP_HEADER = struct.Struct("!BBHII")
# how often (capture clock) every open call's mixer is moved on
TICK_S = 0.5
# RTP may trail a BYE a little; a call is finished this long after it ended
END_GRACE_S = 2.0
# plain RTP of known streams goes through the vectorised lane (tests turn it off to compare the paths)
VECTOR_LANE = True
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(slots=True)
class MixOptions:
    """Output settings of ``callrec mix``."""

    fmt: str = "mp3"
    codec: str = "pcm"
    bitrate_kbps: int = 16
    rate: int = 8000
    call_id: str | None = None
    # stereo only: the party ids ("A", "B", "P1"...) for the left channel, every other party right
    # (stitching puts the customer left); None keeps the default layout (caller left, callee right)
    left: frozenset[str] | None = None

    @property
    def channels(self) -> int:
        return 1 if self.fmt == "wav" and self.codec == "gsm" else 2

    @property
    def extension(self) -> str:
        return "." + self.fmt


@dataclass(slots=True)
class CallOutput:
    """One call's result, as printed by ``--json``."""

    call_id: str
    output: Path | None
    duration_s: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    bytes: int = 0
    streams: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # capture time (epoch seconds) of the output's t = 0 (the call's earliest media as placed)
    started_at: float | None = None
    # each party's speaking segments in output time, {"A": [[from_s, to_s], ...], ...}
    speech: dict[str, list[list[float]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "output": str(self.output) if self.output else None,
            "duration_s": round(self.duration_s, 3),
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "bytes": self.bytes,
            "streams": self.streams,
            "warnings": self.warnings,
            "error": self.error,
        }


@dataclass(slots=True)
class MixReport:
    calls: list[CallOutput] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


def safe_name(call_id: str) -> str:
    """A Call-ID as a file name: every character outside ``[A-Za-z0-9._-]`` becomes ``_``."""
    return _UNSAFE.sub("_", call_id) or "_"


def _unique_name(name: str, taken: set[str]) -> str:
    """``name``, or for the second, third... call sharing it ``name-2``, ``name-3``..."""
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


@dataclass(slots=True)
class _Job:
    info: CallInfo
    mixer: CallMixer
    writer: Mp3Writer | WavWriter
    name: str = ""
    opened_bytes: int = 0  # what the writer held before any audio: more means the mix has begun


@dataclass(slots=True)
class _Route:
    """The cached way from (endpoint, SSRC) to a timeline, so the hot path does one dict lookup."""

    push: Callable[[float, int, int, int, bytes, RtpMap | None], None]
    t0: float  # capture time of the mixer's position 0 (its origin)
    rate: int
    codecs: dict[int, RtpMap | None]
    binding: Binding | None
    timeline: SsrcTimeline | None = None


_SKIP = _Route(lambda *args: None, 0.0, 0, {}, None)  # RTP nobody signalled, or of a call not asked for


class _Run:
    """One pass over one capture."""

    def __init__(self, staging: Path, opts: MixOptions) -> None:
        self.staging = staging
        self.opts = opts
        self.tracker = DialogTracker()
        self.jobs: dict[int, _Job] = {}
        self.report = MixReport()
        self.names: set[str] = set()
        self._fallbacks: dict[tuple[int, int], RtpMap | None] = {}
        self._routes: dict[tuple[bytes, int, int], _Route] = {}
        self._epoch = 0  # bumped whenever routes are added or dropped
        self.counts = {"rtp": 0, "rtcp": 0, "sip": 0, "not_rtp": 0, "unmatched": 0}
        self._next_tick = 0.0
        self._now = 0.0
        self._progress: Callable[[int, int], None] | None = None
        self._reader: CaptureReader | None = None

    def run(self, reader: CaptureReader, progress: Callable[[int, int], None] | None) -> None:
        tracker, counts = self.tracker, self.counts
        bindings = tracker.bindings
        framers: dict[tuple[bytes, int, bytes, int], StreamFramer] = {}
        self._progress, self._reader = progress, reader
        routes = self._routes
        rtp_count = 0
        for d in self._lane(reader.batches()) if VECTOR_LANE else reader:
            now = self._now = d.ts
            if now >= self._next_tick:
                # before the packet, for every packet: the RTP fast path below ends in `continue`
                self._next_tick = now + TICK_S
                self._tick(now)
                if progress is not None:
                    progress(reader.bytes_read, reader.total_bytes)
            if d.proto == 17:
                payload = d.payload
                if len(payload) >= 12 and payload[0] >> 6 == 2 and not 192 <= payload[1] <= 223:
                    # the hot path: an RTP packet whose (endpoint, SSRC) already has its timeline
                    b0, b1, seq, ts, ssrc = _RTP_HEADER.unpack_from(payload)
                    route = routes.get((d.dst, d.dport, ssrc))
                    if route is None:
                        binding = bindings.get((d.dst, d.dport))
                        route = _SKIP if binding is None else self._route(binding, d.dst, d.dport, ssrc, now, d.src)
                    if route is not _SKIP:
                        if b0 & 0x3F:
                            start, end = payload_offset(payload)
                            if end <= start:
                                counts["not_rtp"] += 1
                                continue
                            payload = payload[start:end]
                        else:
                            payload = payload[12:]
                        pt = b1 & 0x7F
                        codec = route.codecs.get(pt)
                        if codec is None:
                            codec = route.codecs[pt] = self._codec_fallback(route.binding, pt)
                        route.push((now - route.t0) * route.rate, seq, ts, pt, payload, codec)
                        rtp_count += 1
                    elif (d.dst, d.dport) not in bindings:
                        counts["unmatched"] += 1  # RTP nobody signalled (a call not asked for is skipped silently)
                    continue
                binding = bindings.get((d.dst, d.dport))
                if binding is not None and len(payload) >= 12 and payload[0] >> 6 == 2:
                    counts["rtcp"] += 1  # RTCP multiplexed on the RTP port (RFC 5761)
                elif looks_like_sip(payload):
                    counts["sip"] += 1
                    self._sip(now, payload)
                elif (d.dst, d.dport - 1) in bindings:
                    counts["rtcp"] += 1
                elif binding is not None:
                    counts["not_rtp"] += 1
                else:
                    counts["unmatched"] += 1
            elif d.proto == 6:
                key = (d.src, d.sport, d.dst, d.dport)
                framer = framers.get(key)
                if framer is None:
                    if not looks_like_sip(d.payload):
                        continue
                    framer = framers[key] = StreamFramer()
                for message in framer.feed(d.payload):
                    counts["sip"] += 1
                    self._sip(now, message)
        self._tick(self._now)
        for dialog in list(tracker.dialogs.values()):
            self._finish(dialog)
        counts["rtp"] += rtp_count
        if progress is not None:
            progress(reader.total_bytes, reader.total_bytes)

    # the vectorised lane
    def _lane(self, items: Iterator[Datagram | UdpBlock]) -> Iterator[Datagram]:
        """Take the plain RTP of known streams out of each block; hand the rest on, in capture order."""
        for item in items:
            if type(item) is UdpBlock:
                yield from self._block(item)
            else:
                yield item  # type: ignore[misc]

    def _block(self, block: UdpBlock) -> Iterator[Datagram]:
        n = len(block)
        b0, b1 = block.field(28, 1), block.field(29, 1)
        # RTP without CSRCs, extension or padding, and never earlier than the packet before
        plain = (block.length >= 12) & (b0 == 0x80) & ((b1 < 192) | (b1 > 223))
        plain[1:] &= block.ts[1:] >= block.ts[:-1]
        cand = np.flatnonzero(plain)
        if not len(cand):
            for i in range(n):
                yield block.datagram(i)
            return
        # streams: (destination address, port, SSRC), numbered by one 64-bit key
        endpoint = (block.field(16, 4)[cand] << 16) | block.field(22, 2)[cand]
        ssrcs, ssrc_no = np.unique(block.field(36, 4)[cand], return_inverse=True)
        keys, which = np.unique(endpoint * len(ssrcs) + ssrc_no.reshape(-1), return_inverse=True)
        which = which.reshape(-1)
        key = np.full(n + 1, len(keys), np.int64)  # len(keys): not plain RTP
        key[cand] = which
        order = np.argsort(which, kind="stable")
        members = np.split(cand[order], np.cumsum(np.bincount(which, minlength=len(keys)))[:-1])
        stream_keys = [
            (int(k // len(ssrcs) >> 16).to_bytes(4, "big"), int(k // len(ssrcs) & 0xFFFF), int(ssrcs[k % len(ssrcs)]))
            for k in keys.tolist()
        ]
        times: list[float] = block.ts.tolist()
        header = (block.field(30, 2), block.field(32, 4), b1 & 0x7F)  # sequence number, timestamp, PT
        pos, epoch, slow = 0, -1, [n]
        routes: list[_Route | None] = []
        while pos < n:
            if epoch != self._epoch:
                # which streams the lane takes: those with a route (the first packet of one makes it)
                epoch = self._epoch
                routes = self._lane_routes(stream_keys)
                ok = np.array([r is not None for r in routes] + [False])[key[:n]]
                slow = [*np.flatnonzero(~ok).tolist(), n]
            stop = slow[bisect_left(slow, pos)]
            if stop == pos:
                yield block.datagram(pos)
                pos += 1
                continue
            pos = self._stretch(block, pos, stop, routes, members, times, header)

    def _lane_routes(self, stream_keys: list[tuple[bytes, int, int]]) -> list[_Route | None]:
        """The route of each stream, or None when its packets must take the per-packet path."""
        routes = [self._routes.get(k) for k in stream_keys]
        timelines = [id(r.timeline) for r in routes if r is not None and r.timeline is not None]
        shared = {t for t in timelines if timelines.count(t) > 1}
        # two endpoints feeding one timeline would interleave two runs in it: not for the lane
        return [None if r is not None and id(r.timeline) in shared else r for r in routes]

    def _stretch(
        self,
        block: UdpBlock,
        start: int,
        stop: int,
        routes: list[_Route | None],
        members: list[np.ndarray],
        times: list[float],
        header: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> int:
        """Feed the block's packets [start, stop), all plain RTP of streams with a route, ticking the
        mixers on the way exactly as the per-packet loop does; return where it stopped (at ``stop``, or
        earlier when a tick changed the routes)."""
        feeds: list[tuple[list[int], StreamFeed]] = []
        for route, idx in zip(routes, members, strict=False):
            lo, hi = np.searchsorted(idx, [start, stop]).tolist()
            if route is None or route.timeline is None or lo == hi:
                continue  # no packets here, or a call not asked for (dropped, as per packet)
            sel = idx[lo:hi]
            seq, ts, pt = header
            feed = StreamFeed(
                route.timeline,
                (block.ts[sel] - route.t0) * route.rate,
                seq[sel],
                ts[sel],
                pt[sel],
                block.ip[sel] + 40,  # the RTP payload: after IPv4, UDP and the 12-byte RTP header
                block.length[sel] - 12,
                block.data,
                block.buf,
                self._codec_lookup(route),
            )
            feeds.append((sel.tolist(), feed))
        epoch = self._epoch
        at = start
        try:
            while True:
                tick = bisect_left(times, self._next_tick, at, stop)
                for sel_list, feed in feeds:
                    feed.feed(bisect_left(sel_list, tick))
                if tick >= stop:
                    self._now = times[stop - 1]
                    return stop
                now = self._now = times[tick]
                self._next_tick = now + TICK_S
                self._tick(now)
                if self._progress is not None and self._reader is not None:
                    self._progress(self._reader.bytes_read, self._reader.total_bytes)
                if self._epoch != epoch:
                    return tick
                at = tick
        finally:
            for _, feed in feeds:
                feed.close()
                self.counts["rtp"] += feed.done

    def _codec_lookup(self, route: _Route) -> Callable[[int], RtpMap | None]:
        def codec_of(pt: int) -> RtpMap | None:
            codec = route.codecs.get(pt)
            if codec is None:
                codec = route.codecs[pt] = self._codec_fallback(route.binding, pt)
            return codec

        return codec_of

    def _route(self, binding: Binding, dst: bytes, dport: int, ssrc: int, now: float, src: bytes = b"") -> _Route:
        """Where one SSRC sent to one endpoint goes (its call's mixer is started on its first packet)."""
        binding = self._shared(binding, src, dst, dport, ssrc, now)
        job = self.jobs.get(id(binding.dialog))
        if job is None:
            job = self._start(binding.dialog)
        if job is None:
            route = _SKIP  # a call not asked for (--call-id)
        else:
            timeline = job.mixer.timeline(binding.stream.party, ssrc, now)
            assert job.mixer.origin is not None
            route = _Route(
                timeline.push, job.mixer.origin, job.mixer.rate, dict(binding.stream.rtpmap), binding, timeline
            )
        self._routes[(dst, dport, ssrc)] = route
        self._epoch += 1
        return route

    def _shared(self, binding: Binding, src: bytes, dst: bytes, dport: int, ssrc: int, now: float) -> Binding:
        """Call finding by media: a call whose SSRC another live call already has (a proxy that masks the
        Call-ID) joins that call (``DialogTracker.note_ssrc``) while nothing of it was written yet; a mix it
        began is dropped (what it took, the other leg carries too); routes are rebuilt after."""

        def unwritten(dialog: Dialog) -> bool:
            job = self.jobs.get(id(dialog))
            return job is None or job.writer.bytes == job.opened_bytes

        joined = self.tracker.note_ssrc((dst, dport), ssrc, now, src, unwritten)
        if joined is None or joined is binding:
            return binding
        dropped = self.jobs.pop(id(binding.dialog), None) if joined.dialog is not binding.dialog else None
        if dropped is not None:
            dropped.writer.close()
            dropped.writer.path.unlink(missing_ok=True)
            self.names.discard(dropped.name)
        self._routes.clear()
        self._fallbacks.clear()
        self._epoch += 1
        return joined

    def _codec_fallback(self, binding: Binding | None, pt: int) -> RtpMap | None:
        """A payload type the receiver's SDP does not list: senders use what they offered themselves
        (their own SDP), or a static RFC 3551 type nobody negotiated; media is decoded as received."""
        if binding is None:
            return None
        key = (id(binding.stream), pt)
        if key in self._fallbacks:
            return self._fallbacks[key]
        codec = next((s.rtpmap[pt] for s in binding.dialog.info.streams if pt in s.rtpmap), None)
        if codec is None and pt in STATIC_PAYLOAD_TYPES:
            encoding, clock, channels = STATIC_PAYLOAD_TYPES[pt]
            codec = RtpMap(encoding, clock, channels)
        self._fallbacks[key] = codec
        return codec

    def _sip(self, now: float, data: bytes) -> None:
        version = self.tracker.version
        self.tracker.feed(now, data)
        if self.tracker.version != version:
            # endpoints or codecs changed: routes are rebuilt on the next packet
            self._routes.clear()
            self._epoch += 1

    def _start(self, dialog: Dialog) -> _Job | None:
        info = dialog.info
        if self.opts.call_id is not None and self.opts.call_id not in info.call_ids:
            return None
        name = _unique_name(safe_name(info.call_id), self.names)
        self.names.add(name)
        path = self.staging / (name + self.opts.extension)
        writer = open_writer(
            path,
            fmt=self.opts.fmt,
            rate=self.opts.rate,
            channels=self.opts.channels,
            bitrate_kbps=self.opts.bitrate_kbps,
            codec=self.opts.codec,
        )
        mixer = CallMixer(info, writer, rate=self.opts.rate, channels=self.opts.channels, left=self.opts.left)
        job = self.jobs[id(dialog)] = _Job(info, mixer, writer, name, writer.bytes)
        return job

    def _tick(self, now: float) -> None:
        for dialog in list(self.tracker.dialogs.values()):
            job = self.jobs.get(id(dialog))
            if job is not None:
                job.mixer.advance(now)
            if dialog.ended_at is not None and now - dialog.ended_at > END_GRACE_S:
                self._finish(dialog)

    def _finish(self, dialog: Dialog) -> None:
        self.tracker.forget(dialog)
        # fallbacks are keyed by object ids, which a finished dialog's objects give back
        self._routes.clear()
        self._fallbacks.clear()
        self._epoch += 1
        job = self.jobs.pop(id(dialog), None)
        info = dialog.info
        if job is None:
            if self.opts.call_id is None or self.opts.call_id in info.call_ids:
                self.report.calls.append(CallOutput(info.call_id, None, error="the call has no media"))
            return
        result = job.mixer.finish()
        self.report.calls.append(
            CallOutput(
                call_id=info.call_id,
                output=job.writer.path,
                duration_s=result.duration_s,
                sample_rate=result.sample_rate,
                channels=result.channels,
                bytes=job.writer.bytes,
                streams=result.streams_json(),
                warnings=result.warnings,
                started_at=result.t0,
                speech=result.speech,
            )
        )


def mix(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    opts: MixOptions,
    progress: Callable[[int, int], None] | None = None,
) -> MixReport:
    """Mix every call of a capture or tape ``source`` into ``output`` (a folder, or one file)."""
    source, output = Path(source), Path(output)
    single_file = output.suffix.lower() in (".mp3", ".wav") and not output.is_dir()
    target_dir = output.parent if single_file else output
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".callrec-", dir=target_dir))
    except OSError as exc:
        raise OutputError(f"cannot create {target_dir}: {exc.strerror}") from exc
    try:
        run = _Run(staging, opts)
        if tape.is_tape(source):
            info = tape.read_info(source)
            run.tracker.add_call(info)
            pcap_path = source / tape.MEDIA_FILE
        elif rtpengine.is_recording(source):
            rec = rtpengine.locate(source)
            run.tracker.add_call(rtpengine.call_info(rec))
            pcap_path = rec.pcap
        else:
            pcap_path = source
        with CaptureReader(pcap_path) as reader:
            run.run(reader, progress)
            run.report.warnings.extend(reader.warnings)
            run.report.stats = {**reader.stats, **run.counts, "sip_malformed": run.tracker.malformed}
        _place_outputs(run.report, output, single_file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return run.report


def _place_outputs(report: MixReport, output: Path, single_file: bool) -> None:
    written = [c for c in report.calls if c.output is not None]
    if not (single_file and len(written) == 1):
        output.mkdir(parents=True, exist_ok=True)
    for call in written:
        assert call.output is not None
        dest = output if single_file and len(written) == 1 else output / call.output.name
        os.replace(call.output, dest)
        call.output = dest
