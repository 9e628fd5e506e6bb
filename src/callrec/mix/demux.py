"""Datagram → call → stream: one pass over a capture, every RTP packet to its call's mixer.

SIP builds the dialogs and says where each party receives media; RTP sent there goes to that call's
mixer, which streams the call's recording to disk as it goes. Most of a capture is plain RTP of streams
already known: a classic pcap is read a block at a time and such packets go through the vectorised lane
(:mod:`callrec.mix.lane`) with exactly the per-packet path's results; every other packet takes the
per-packet path below, in capture order. SRTP (:mod:`callrec.mix.srtp`) is decrypted there, before its RTP
is read; its routes are kept apart from plain RTP's, so plain RTP neither pays for it nor leaves the lane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from callrec.files.pcap import CaptureReader
from callrec.media.encode import Mp3Writer, WavWriter, open_writer
from callrec.media.mixer import CallMixer
from callrec.media.timeline import SsrcTimeline
from callrec.media_limits import OutputOptions
from callrec.mix.lane import BlockLane
from callrec.mix.report import CallOutput, MixReport, unique_name
from callrec.models import CallInfo, RtpMap, Stream, static_rtpmap
from callrec.names import safe_name
from callrec.wire.dialogs import Binding, Dialog, DialogTracker, looks_like_sip
from callrec.wire.rtp import payload_offset, unpack_header
from callrec.wire.sip import StreamFramer

if TYPE_CHECKING:  # mix/srtp.py (libsrtp, the SDES parser) loads with a call's first SRTP stream
    from callrec.mix.srtp import SrtpStream

# how often (capture clock) every open call's mixer is moved on: each tick releases that much audio in one
# step (the mixer's STEP_S), so a longer tick means fewer, larger numpy operations and lame calls for the
# same recording (tests/mix/test_mix_step.py); 0.5 -> 1 s saved ~0.04 CPU-s of a 20-minute mix (~3.5 %)
TICK_S = 1.0
# RTP may trail a BYE a little; a call is finished this long after it ended
END_GRACE_S = 2.0
# plain RTP of known streams goes through the vectorised lane (tests turn it off to compare the paths)
VECTOR_LANE = True

StreamKey = tuple[bytes, int, int]  # (destination address, port, SSRC)


@dataclass(slots=True)
class Route:
    """The cached way from (endpoint, SSRC) to a timeline, so the hot path does one dict lookup."""

    push: Callable[[float, int, int, int, bytes, RtpMap | None], None]
    t0: float  # capture time of the mixer's position 0 (its origin)
    rate: int
    codecs: dict[int, RtpMap | None]
    binding: Binding | None
    timeline: SsrcTimeline | None = None
    srtp: SrtpStream | None = None  # an SRTP stream's decryption (its routes are in Demux.srtp_routes)


SKIP = Route(lambda *args: None, 0.0, 0, {}, None)  # RTP nobody signalled, or of a call not asked for


@dataclass(slots=True)
class _Job:
    info: CallInfo
    mixer: CallMixer
    writer: Mp3Writer | WavWriter
    name: str = ""
    opened_bytes: int = 0  # what the writer held before any audio: more means the mix has begun


class Demux:
    """One pass over one capture: the calls it finds are written to ``staging``, and reported."""

    def __init__(
        self, staging: Path, output: OutputOptions, call_id: str | None = None, left: frozenset[str] | None = None
    ) -> None:
        self.staging = staging
        self.output = output
        self.call_id = call_id  # mix only the call with this Call-ID
        # stereo only: the party ids ("A", "B", "P1"...) for the left channel, every other party right
        # (stitching puts the customer left); None keeps the default layout (caller left, callee right)
        self.left = left
        self.tracker = DialogTracker()
        self.jobs: dict[int, _Job] = {}
        self.report = MixReport()
        self.names: set[str] = set()
        self.routes: dict[StreamKey, Route] = {}
        # SRTP streams' routes: apart, so the lane and plain RTP's hot path never meet them
        self.srtp_routes: dict[StreamKey, Route] = {}
        # each SRTP stream's decryption, kept across route changes (replay windows, counters): id(stream) ->
        # (the stream, held so its id stays its own, its decryption)
        self._srtp: dict[int, tuple[Stream, SrtpStream]] = {}
        self.epoch = 0  # bumped whenever routes are added or dropped
        self.counts = {"rtp": 0, "rtcp": 0, "sip": 0, "not_rtp": 0, "unmatched": 0}
        self.next_tick = 0.0
        self.now = 0.0
        self._fallbacks: dict[tuple[int, int], RtpMap | None] = {}
        self._progress: Callable[[int, int], None] | None = None
        self._reader: CaptureReader | None = None

    def run(self, reader: CaptureReader, progress: Callable[[int, int], None] | None) -> None:
        tracker, counts = self.tracker, self.counts
        bindings = tracker.bindings
        framers: dict[tuple[bytes, int, bytes, int], StreamFramer] = {}
        self._progress, self._reader = progress, reader
        routes, srtp_routes = self.routes, self.srtp_routes
        rtp_count = 0
        for d in BlockLane(self).datagrams(reader.batches()) if VECTOR_LANE else reader:
            now = self.now = d.ts
            if now >= self.next_tick:
                self.tick(now)  # before the packet, for every packet: the RTP fast path below ends in `continue`
            if d.proto == 17:
                payload = d.payload
                if len(payload) >= 12 and payload[0] >> 6 == 2 and not 192 <= payload[1] <= 223:
                    # the hot path: an RTP packet (not RTCP) whose (endpoint, SSRC) already has its timeline;
                    # 12 is RTP_HEADER_LENGTH, written out: a constant costs less than a global, per packet
                    b0, b1, seq, ts, ssrc = unpack_header(payload)
                    route = routes.get((d.dst, d.dport, ssrc))
                    if route is None:
                        # SRTP, or a stream's first packet: plain RTP of a known stream never comes here
                        route = srtp_routes.get((d.dst, d.dport, ssrc))
                        if route is None:
                            binding = bindings.get((d.dst, d.dport))
                            route = SKIP if binding is None else self._route(binding, d.dst, d.dport, ssrc, now, d.src)
                        if route.srtp is not None:
                            plain = route.srtp.unprotect(payload, ssrc)  # the header is the same, in clear
                            if plain is None:
                                continue  # counted by the stream
                            payload = plain
                    if route is not SKIP:
                        if b0 & 0x3F:  # padding, an extension or CSRCs
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
        self._advance(self.now)
        for dialog in list(tracker.dialogs.values()):
            self._finish(dialog)
        counts["rtp"] += rtp_count
        if progress is not None:
            progress(reader.total_bytes, reader.total_bytes)

    def tick(self, now: float) -> None:
        """The capture clock reached ``next_tick``: move every open call's mixer on, finish the calls
        that ended, report progress."""
        self.next_tick = now + TICK_S
        self._advance(now)
        if self._progress is not None and self._reader is not None:
            self._progress(self._reader.bytes_read, self._reader.total_bytes)

    def codec_lookup(self, route: Route) -> Callable[[int], RtpMap | None]:
        """A payload type's codec on ``route`` (as the per-packet path finds it), for the lane."""

        def codec_of(pt: int) -> RtpMap | None:
            codec = route.codecs.get(pt)
            if codec is None:
                codec = route.codecs[pt] = self._codec_fallback(route.binding, pt)
            return codec

        return codec_of

    def _route(self, binding: Binding, dst: bytes, dport: int, ssrc: int, now: float, src: bytes = b"") -> Route:
        """Where one SSRC sent to one endpoint goes (its call's mixer is started on its first packet)."""
        binding = self._shared(binding, src, dst, dport, ssrc, now)
        job = self.jobs.get(id(binding.dialog))
        if job is None:
            job = self._start(binding.dialog)
        if job is None:
            route = SKIP  # a call not asked for (call_id)
        else:
            timeline = job.mixer.timeline(binding.stream.party, ssrc, now)
            assert job.mixer.origin is not None
            route = Route(
                timeline.push, job.mixer.origin, job.mixer.rate, dict(binding.stream.rtpmap), binding, timeline
            )
            if binding.srtp:
                route.srtp = self._srtp_stream(binding)
                self.srtp_routes[(dst, dport, ssrc)] = route
                return route
        self.routes[(dst, dport, ssrc)] = route
        self.epoch += 1
        return route

    def _srtp_stream(self, binding: Binding) -> SrtpStream:
        """The decryption of an SRTP stream, with every key known for it now."""
        from callrec.mix.srtp import SrtpStream

        entry = self._srtp.get(id(binding.stream))
        if entry is None:
            entry = self._srtp[id(binding.stream)] = (binding.stream, SrtpStream())
        entry[1].update(binding.sdes_keys())
        return entry[1]

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
        self._forget_routes()
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
        if codec is None:
            codec = static_rtpmap(pt)
        self._fallbacks[key] = codec
        return codec

    def _sip(self, now: float, data: bytes) -> None:
        version = self.tracker.version
        self.tracker.feed(now, data)
        if self.tracker.version != version:
            # endpoints, codecs or keys changed: routes are rebuilt on the next packet
            self.routes.clear()
            self.srtp_routes.clear()
            self.epoch += 1

    def _forget_routes(self) -> None:
        # fallbacks are keyed by object ids, which a finished dialog's objects give back
        self.routes.clear()
        self.srtp_routes.clear()
        self._fallbacks.clear()
        self.epoch += 1

    def _start(self, dialog: Dialog) -> _Job | None:
        info = dialog.info
        if self.call_id is not None and self.call_id not in info.call_ids:
            return None
        name = unique_name(safe_name(info.call_id), self.names)
        self.names.add(name)
        out = self.output
        writer = open_writer(
            self.staging / (name + out.extension),
            fmt=out.format,
            rate=out.rate_hz,
            channels=out.channels,
            bitrate_kbps=out.bitrate_kbps,
            codec=out.codec,
        )
        mixer = CallMixer(info, writer, rate=out.rate_hz, channels=out.channels, left=self.left)
        job = self.jobs[id(dialog)] = _Job(info, mixer, writer, name, writer.bytes)
        return job

    def _advance(self, now: float) -> None:
        for dialog in list(self.tracker.dialogs.values()):
            job = self.jobs.get(id(dialog))
            if job is not None:
                job.mixer.advance(now)
            if dialog.ended_at is not None and now - dialog.ended_at > END_GRACE_S:
                self._finish(dialog)

    def _finish(self, dialog: Dialog) -> None:
        self.tracker.forget(dialog)
        self._forget_routes()
        job = self.jobs.pop(id(dialog), None)
        info = dialog.info
        srtp = [(i, s.party, e[1]) for i, s in enumerate(info.streams) if (e := self._srtp.pop(id(s), None))]
        if job is None:
            if self.call_id is None or self.call_id in info.call_ids:
                self.report.calls.append(CallOutput(info.call_id, None, error="the call has no media"))
            return
        result = job.mixer.finish()
        streams = result.streams_json()
        told: list[str] = []
        if srtp:
            from callrec.mix.srtp import add_counters, reasons

            add_counters(streams, [(party, s) for _, party, s in srtp])
            told = [reason for index, party, s in srtp for reason in reasons(index, party, s)]
        self.report.calls.append(
            CallOutput(
                call_id=info.call_id,
                output=job.writer.path,
                duration_s=result.duration_s,
                sample_rate=result.sample_rate,
                channels=result.channels,
                bytes=job.writer.bytes,
                streams=streams,
                warnings=result.warnings + told,
                started_at=result.t0,
                speech=result.speech,
                reasons=told,
            )
        )
