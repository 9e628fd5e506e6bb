"""Per-SSRC sequencing: de-duplication, reordering, loss and jitter figures, and anchoring to arrival time.

Every packet gets a position on the call's output timeline (in output samples from the mixer's origin, a
little before the call's first packet arrived). The position comes from the packet's RTP timestamp,
anchored to arrival time by its segment (:mod:`callrec.media.anchor`: the least delay over a sliding
3-second window, followed slowly once audio is placed, a new segment on a clock jump).

Packets wait in a jitter buffer (:mod:`callrec.media.playout`) and are released in sequence order once
the timeline has moved ``JITTER_DELAY_S`` past them. Sequence numbers and timestamps are extended across
their wrap as :mod:`callrec.media.seq` says; the figures go to :class:`StreamStats`.

Runs of plain in-order packets can also be taken at once, as arrays, through the lane of
:mod:`callrec.media.lane` (``lane_ready``, ``plan``, ``take``, ``settle``): the same result, faster.
"""

from __future__ import annotations

from callrec.media.anchor import ANCHOR_BUCKET_S, ANCHOR_SLACK_S, CORRECTION_STEP_S, REANCHOR_S, Segment
from callrec.media.lane import (
    ByteRows,
    FloatArray,
    IntArray,
    LanePlan,
    LaneRun,
    jitter_course,
    plan_anchor,
)
from callrec.media.playout import PlayoutBuffer, Run
from callrec.media.seq import (
    SEQ_HALF,
    SEQ_MASK,
    SEQ_MOD,
    TS_HALF,
    TS_MASK,
    TS_MOD,
    extend_timestamps,
    next_seq,
)
from callrec.media.streamstats import StreamStats
from callrec.models import RtpMap

# release a packet this long after its slot: reordering/jitter up to 200 ms must still be absorbed
JITTER_DELAY_S = 0.4
# duplicates are recognised this many sequence numbers back (a power of two: a ring indexed by seq)
SEEN_HORIZON = 4096
DEFAULT_CLOCK_RATE = 8000

_AUDIO, _EVENT, _NOISE = 0, 1, 2
_SEEN_MASK = SEEN_HORIZON - 1


class SsrcTimeline:
    """One SSRC of one party: orders its packets and positions them on the output timeline.

    ``push`` runs for every packet of every call, so its common case (the next packet in sequence, same
    payload type) is kept short: sequence numbers seen are remembered in a ring, not a set, and in-order
    packets are appended to the pending list instead of going through a heap.
    """

    def __init__(self, ssrc: int, party: str, out_rate: int) -> None:
        self.ssrc = ssrc
        self.party = party
        self.out_rate = out_rate
        self.stats = StreamStats(ssrc=ssrc, party=party)
        self._slack = ANCHOR_SLACK_S * out_rate
        self._buffer = PlayoutBuffer(self._slack, CORRECTION_STEP_S * out_rate)
        self._pending = self._buffer.pending  # push appends in-order packets to it directly
        self._seen = [-1] * SEEN_HORIZON
        self._max: int | None = None
        self._ref_ts = 0
        self._last_pt = -1
        self._last_codec: RtpMap | None = None
        self._kind = _AUDIO
        self._clock = DEFAULT_CLOCK_RATE
        self._name = ""
        self._segment: Segment | None = None
        self._signal_segment: Segment | None = None  # positions non-audio packets when no audio segment fits
        self._transit: float | None = None
        self._jitter = 0.0
        self._max_jitter = 0.0  # in timestamp units of the current clock
        self._ts_per_sample = DEFAULT_CLOCK_RATE / out_rate
        self._count = 0  # audio packets of the current payload type not yet added to stats.codecs
        self._received = 0
        self.signal_end = 0.0  # output position where the last telephone-event or comfort noise ends
        self._delay = JITTER_DELAY_S * out_rate
        self._bucket = ANCHOR_BUCKET_S * out_rate
        self._reanchor = REANCHOR_S * out_rate
        self._plan: LanePlan | None = None  # a run being taken through the lane

    def push(self, arrival: float, seq: int, ts: int, pt: int, payload: bytes, codec: RtpMap | None) -> None:
        """Take one packet that arrived at output position ``arrival``."""
        if self._plan is not None:
            self.settle()
        # sequence: duplicates, reordering, late arrivals
        top = self._max
        in_order = True
        if top is None:
            ext_seq = self._max = seq
            self.stats.first_seq = seq
            self._ref_ts = ts
        else:
            # seq.seq_distance written out (a call per packet costs more than the arithmetic)
            step = (seq - top) & SEQ_MASK
            if step == 1:
                ext_seq = self._max = top + 1
            else:
                if step >= SEQ_HALF:
                    step -= SEQ_MOD
                ext_seq = top + step
                if self._seen[ext_seq & _SEEN_MASK] == ext_seq:
                    self.stats.duplicates += 1
                    return
                if step < 0:
                    in_order = False
                    self._out_of_order(ext_seq)
                else:
                    self._max = ext_seq
        self._seen[ext_seq & _SEEN_MASK] = ext_seq
        self._received += 1
        # seq.unwrap_ts written out
        ref = self._ref_ts
        delta = (ts - ref) & TS_MASK
        if delta >= TS_HALF:
            delta -= TS_MOD
        ext_ts = ref + delta
        if in_order:
            self._ref_ts = ext_ts
        if ext_seq <= self._buffer.released:
            self.stats.late += 1
            return
        # what the payload is: telephone-events and comfort noise are counted, never decoded
        if pt != self._last_pt or codec is not self._last_codec:
            self._classify(pt, codec)
        if self._kind != _AUDIO:
            self._signal(arrival, ext_ts, payload)
            return
        self._count += 1
        # RFC 3550 section 6.4.1 interarrival jitter, in timestamp units
        transit = arrival * self._ts_per_sample - ext_ts
        if self._transit is not None:
            jitter = self._jitter = self._jitter + (abs(transit - self._transit) - self._jitter) / 16.0
            if jitter > self._max_jitter:
                self._max_jitter = jitter
                if jitter / self._clock > self.stats.max_jitter:
                    self.stats.max_jitter = jitter / self._clock
        self._transit = transit
        # anchoring: the offset of a packet is how late it arrived compared with its timestamp
        segment = self._segment
        if segment is None or segment.clock_rate != self._clock:
            # a new clock (first packet, or a codec change to another clock rate) starts a new segment
            segment = self._new_segment(arrival, ext_ts, self._clock)
        offset = arrival - (ext_ts - segment.base_ts) * segment.scale
        target = segment.target
        if offset - target > self._reanchor or (target - offset > self._reanchor and segment.started):
            # far later (or earlier) than the timestamps say: the sender's clock jumped, start again
            segment = self._new_segment(arrival, ext_ts, self._clock)
            offset = arrival
        elif offset < target:
            if target - offset > self._slack:
                segment.moved_at = ext_ts  # the delay dropped here: what came before stays where it is
            segment.follow(offset)  # less delayed than any packet of the window: the estimate
        if offset < segment.bucket_min:
            segment.bucket_min = offset
        if arrival >= segment.bucket_end:
            segment.next_bucket(arrival, self._bucket)
        item = (ext_seq, ext_ts, pt, payload, segment, codec)
        pending = self._pending
        if in_order or len(pending) == self._buffer.head:
            pending.append(item)
        else:
            self._buffer.insert(item)

    # the lane
    def lane_ready(self, seq: int, pt: int, codec: RtpMap | None) -> bool:
        """Whether a run starting with this packet can go through the lane: it is the next in sequence,
        of the payload type, codec and clock of the audio before it, and no other run is under way."""
        top = self._max
        segment = self._segment
        return (
            self._plan is None
            and top is not None
            and seq == next_seq(top)
            and pt == self._last_pt
            and codec is self._last_codec
            and self._kind == _AUDIO
            and segment is not None
            and segment.clock_rate == self._clock
        )

    def plan(self, arrival: FloatArray, ts: IntArray, payloads: ByteRows) -> int:
        """Start a run through the lane, right after ``lane_ready`` said yes for its first packet.

        The run: packets in consecutive sequence order, of that payload type, with arrival positions that
        never go back, RTP timestamps ``ts`` and one payload per row. Returns how many of them the lane
        takes (the run ends before a clock jump; 0: none); ``take`` then queues them as they arrive.
        """
        segment = self._segment
        assert self._max is not None and segment is not None
        ext_ts = extend_timestamps(ts, self._ref_ts)
        offsets: FloatArray = arrival - (ext_ts - segment.base_ts) * segment.scale
        course = plan_anchor(segment, arrival.tolist(), offsets, self._bucket, self._slack, self._reanchor)
        if course.size:
            self._plan = LanePlan(
                segment, self._last_pt, self._last_codec, self._max + 1, ext_ts, arrival, payloads, offsets, course
            )
        return course.size

    def take(self, count: int) -> None:
        """The first ``count`` packets of the planned run have arrived (``count`` only grows)."""
        assert self._plan is not None and count <= self._plan.size
        self._plan.take(count, self._pending)

    def settle(self) -> None:
        """End the planned run: every figure becomes what ``push`` would have made of the packets taken."""
        plan = self._plan
        if plan is None:
            return
        self._plan = None
        taken = plan.taken
        if not taken:
            return
        last = plan.ext_seq + taken - 1
        self._max = last
        self._ref_ts = int(plan.ext_ts[taken - 1])
        seen = self._seen
        for ext in range(max(plan.ext_seq, last - SEEN_HORIZON + 1), last + 1):
            seen[ext & _SEEN_MASK] = ext
        self._received += taken
        self._count += taken
        transits: list[float] = (plan.arrival[:taken] * self._ts_per_sample - plan.ext_ts[:taken]).tolist()
        self._transit, self._jitter, peak = jitter_course(transits, self._transit, self._jitter, self._max_jitter)
        if peak > self._max_jitter:
            self._max_jitter = peak
            if peak / self._clock > self.stats.max_jitter:
                self.stats.max_jitter = peak / self._clock
        plan.settle_buckets()

    def _out_of_order(self, ext_seq: int) -> None:
        stats = self.stats
        stats.reordered += 1
        if stats.first_seq is not None and ext_seq < stats.first_seq:
            stats.first_seq = ext_seq

    def _classify(self, pt: int, codec: RtpMap | None) -> None:
        self._flush_count()
        self._last_pt, self._last_codec = pt, codec
        if codec is None:
            kind, clock, self._name = _AUDIO, DEFAULT_CLOCK_RATE, f"PT{pt}"
        else:
            name = codec.encoding.lower()
            kind = _EVENT if name == "telephone-event" else _NOISE if name == "cn" else _AUDIO
            clock, self._name = codec.clock_rate, codec.name
        self._kind = kind
        if kind == _AUDIO and clock != self._clock:
            # jitter is measured in timestamp units: another clock starts the estimate again
            self._transit = None
            self._max_jitter = 0.0
        self._clock = clock
        self._ts_per_sample = clock / self.out_rate

    def _flush_count(self) -> None:
        if self._count:
            counts = self.stats.codecs
            counts[self._name] = counts.get(self._name, 0) + self._count
            self._count = 0

    def final_stats(self) -> StreamStats:
        """The stream's figures, complete."""
        self.settle()
        self._flush_count()
        self.stats.received = self._received
        self.stats.max_seq = self._max
        return self.stats

    def _signal(self, arrival: float, ext_ts: int, payload: bytes) -> None:
        """Count a non-audio packet and remember where it ends: the recording lasts until the last media."""
        end = ext_ts
        if self._kind == _EVENT:
            self.stats.events += 1
            # the event lasts from its timestamp for its duration (RFC 4733 section 2.3)
            end += int.from_bytes(payload[2:4], "big") if len(payload) >= 4 else 0
        else:
            self.stats.comfort_noise += 1
        segment = self._segment
        if segment is None or segment.clock_rate != self._clock:
            # no audio on this clock (an SSRC of events only, as some phones send): place by arrival
            segment = self._signal_segment
            if segment is None or segment.clock_rate != self._clock:
                segment = Segment(ext_ts, self._clock, self.out_rate / self._clock, arrival)
                self._signal_segment = segment
        self.signal_end = max(self.signal_end, segment.position(end))

    def _new_segment(self, arrival: float, ext_ts: int, clock: int) -> Segment:
        self._segment = Segment(ext_ts, clock, self.out_rate / clock, arrival, arrival + self._bucket)
        return self._segment

    # the playout buffer
    def next_position(self) -> float:
        """Output position of the next packet waiting to be released (infinity when none waits)."""
        return self._buffer.next_position()

    def waiting(self) -> int:
        """How many packets wait in the jitter buffer."""
        return self._buffer.waiting()

    def release(self, limit: float) -> list[Run | LaneRun]:
        """Release, in sequence order, the waiting packets positioned before ``limit``: runs of one payload
        type each (see :meth:`PlayoutBuffer.release`)."""
        return self._buffer.release(limit)

    @property
    def jitter_delay(self) -> float:
        return self._delay
