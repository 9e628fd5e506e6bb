"""Per-SSRC sequencing: de-duplication, reordering, loss and jitter figures, and anchoring to arrival time.

Every packet gets a position on the call's output timeline (in output samples from the mixer's origin, a
little before the call's first packet arrived). The position comes from the packet's RTP timestamp,
anchored to arrival time. The estimate (a segment's ``target``) is the smallest ``arrival - rtp_time``
seen over a sliding 3-second window, i.e. the least delayed packet: packets held back and delivered late
in a burst arrive later than their timestamps say, so they never pull it, and network jitter does not
shift the audio, while sender clock drift and network delay changes are followed.

Packets wait in a jitter buffer and are released in sequence order once the timeline has moved
``JITTER_DELAY_S`` past them. Until a segment's first packet is released its placement (``anchor``)
simply is the estimate, so a stream whose first packets came late is placed where it really starts.
Once audio of it has been placed, the placement moves only when the estimate has drifted more than
``ANCHOR_SLACK_S`` away, and then by at most ``CORRECTION_STEP_S`` between two packets that play one after
the other, or at once across a silence (no audio is skipped or repeated). A genuine discontinuity (the
timestamps jump by more than ``REANCHOR_S`` against arrival, a new clock) starts a new segment, placed
afresh.

Runs of plain in-order packets can also be taken at once, as arrays, through the lane of
:mod:`callrec.media.lane` (``lane_ready``, ``plan``, ``take``, ``settle``): the same result, faster.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

from callrec.media.lane import (
    Block,
    ByteRows,
    FloatArray,
    IntArray,
    LanePlan,
    LaneRun,
    extend_timestamps,
    jitter_course,
    plan_anchor,
)
from callrec.wire.sdp import RtpMap

# release a packet this long after its slot: reordering/jitter up to 200 ms must still be absorbed
JITTER_DELAY_S = 0.4
# the anchor is the least-delayed packet of the last few buckets (a 3 s window, moving in 0.5 s steps);
# short enough to follow clock drift
ANCHOR_BUCKET_S = 0.5
ANCHOR_BUCKETS = 6
# once audio is placed, its placement follows the estimate only when they are this far apart, so jitter
# does not make small gaps and overlaps (half the 20 ms the recording may be off arrival time)
ANCHOR_SLACK_S = 0.010
# how far the placement moves between two packets that play one after the other (never a skip or a
# repeat of more than this)
CORRECTION_STEP_S = 0.001
# a packet arriving this much later (or earlier) than its timestamp says means the sender's clock jumped:
# a new segment
REANCHOR_S = 0.5
# duplicates are recognised this many sequence numbers back (a power of two: a ring indexed by seq)
SEEN_HORIZON = 4096
DEFAULT_CLOCK_RATE = 8000


@dataclass(slots=True)
class Segment:
    """A run of packets whose timestamps share one clock and one anchor."""

    base_ts: int
    clock_rate: int
    scale: float  # output samples per RTP timestamp unit
    anchor: float  # output position of base_ts: where packets are placed
    bucket_end: float = 0.0  # arrival position where the current bucket closes
    bucket_min: float = float("inf")  # least offset (arrival - timestamp position) in the current bucket
    history: deque[float] = field(default_factory=lambda: deque(maxlen=ANCHOR_BUCKETS))
    target: float = 0.0  # the estimate the anchor follows (the least offset of the window)
    started: bool = False  # whether a packet of the segment was released (placed)
    correcting: bool = False  # whether the anchor is on its way to the target
    # the timestamp from which packets follow the target when it last dropped at once (packets from
    # before that were delayed as the anchor says)
    moved_at: int = -(1 << 62)

    def __post_init__(self) -> None:
        self.target = self.anchor

    def follow(self, target: float) -> None:
        """A new estimate; nothing placed yet moves with it at once."""
        self.target = target
        if not self.started:
            self.anchor = target

    def position(self, ext_ts: int) -> float:
        return self.anchor + (ext_ts - self.base_ts) * self.scale


@dataclass(slots=True)
class StreamStats:
    """Quality figures of one SSRC, as reported by ``callrec mix --json``."""

    ssrc: int
    party: str
    codecs: dict[str, int] = field(default_factory=dict)
    received: int = 0
    duplicates: int = 0
    reordered: int = 0
    late: int = 0
    events: int = 0
    comfort_noise: int = 0
    undecodable: int = 0
    unsupported: list[str] = field(default_factory=list)
    first_seq: int | None = None
    max_seq: int | None = None
    max_jitter: float = 0.0  # seconds

    @property
    def packets(self) -> int:
        """Every packet of the SSRC, duplicates included."""
        return self.received + self.duplicates

    @property
    def lost(self) -> int:
        if self.first_seq is None or self.max_seq is None:
            return 0
        return max(0, self.max_seq - self.first_seq + 1 - self.received)

    def to_json(self) -> dict[str, Any]:
        main = max(self.codecs, key=lambda k: self.codecs[k]) if self.codecs else ""
        return {
            "ssrc": self.ssrc,
            "party": self.party,
            "codec": main,
            "codecs": sorted(self.codecs),
            "packets": self.packets,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "late": self.late,
            "max_jitter_ms": round(self.max_jitter * 1000, 3),
            "telephone_events": self.events,
            "comfort_noise": self.comfort_noise,
            "undecodable": self.undecodable,
            "unsupported_codecs": self.unsupported,
        }


# (ext_seq, ext_ts, payload_type, payload, segment, codec)
Pending = tuple[int, int, int, bytes, Segment, RtpMap | None]
# (payload_type, codec, output positions, payloads): consecutive released packets of one payload type
Run = tuple[int, RtpMap | None, list[int], list[bytes]]
# a run is built from pieces: lists of per-packet entries, or packets of a lane run
_Piece = tuple[list[int], list[bytes]] | LaneRun
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
        self._pending: list[Pending | Block] = []  # sorted by extended sequence number from _head on
        self._head = 0
        self._seen = [-1] * SEEN_HORIZON
        self._max: int | None = None
        self._released = -1 << 62
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
        self._slack = ANCHOR_SLACK_S * out_rate
        self._reanchor = REANCHOR_S * out_rate
        self._plan: LanePlan | None = None  # a run being taken through the lane
        self._step = CORRECTION_STEP_S * out_rate
        # the last packet released: its extended sequence number and timestamp, its segment, and the
        # timestamp units between consecutive packets (0: not known yet), to tell a pause from a packet
        # that plays right after it
        self._last_seq = -1 << 62
        self._last_ts = 0
        self._last_segment: Segment | None = None
        self._frame = 0
        self._last_plan: tuple[LanePlan, int] | None = None  # the last release was a lane block's, up to here
        self._last_pos = 0.0  # the last packet's output position

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
            step = (seq - top) & 0xFFFF
            if step == 1:
                ext_seq = self._max = top + 1
            else:
                if step >= 0x8000:
                    step -= 0x10000
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
        ref = self._ref_ts
        delta = (ts - ref) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        ext_ts = ref + delta
        if in_order:
            self._ref_ts = ext_ts
        if ext_seq <= self._released:
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
            self._next_bucket(segment, arrival)
        item = (ext_seq, ext_ts, pt, payload, segment, codec)
        pending = self._pending
        if in_order or len(pending) == self._head:
            pending.append(item)
        else:
            self._insert(item)

    def _insert(self, item: Pending) -> None:
        """Queue a packet that came out of order, in sequence order."""
        pending = self._pending
        last = pending[-1]
        if (last.ext_seq + len(last) - 1 if type(last) is Block else cast(Pending, last)[0]) < item[0]:
            pending.append(item)
            return
        waiting = pending[self._head :]
        if any(type(p) is Block for p in waiting):
            pending[self._head :] = [q for p in waiting for q in (p.packets() if type(p) is Block else [p])]
        bisect.insort(cast(list[Pending], pending), item, lo=self._head)

    # the lane
    def lane_ready(self, seq: int, pt: int, codec: RtpMap | None) -> bool:
        """Whether a run starting with this packet can go through the lane: it is the next in sequence,
        of the payload type, codec and clock of the audio before it, and no other run is under way."""
        top = self._max
        segment = self._segment
        return (
            self._plan is None
            and top is not None
            and seq == (top + 1) & 0xFFFF
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

    def _next_bucket(self, segment: Segment, arrival: float) -> None:
        """Close the anchor bucket: the estimate becomes the least offset of the window."""
        segment.history.append(segment.bucket_min)
        segment.bucket_min = float("inf")
        segment.bucket_end = arrival + self._bucket
        segment.follow(min(segment.history))

    def _new_segment(self, arrival: float, ext_ts: int, clock: int) -> Segment:
        self._segment = Segment(ext_ts, clock, self.out_rate / clock, arrival, arrival + self._bucket)
        return self._segment

    def next_position(self) -> float:
        """Output position of the next packet waiting to be released (infinity when none waits)."""
        if self._head == len(self._pending):
            return float("inf")
        head = self._pending[self._head]
        if type(head) is Block:
            return head.position()
        head = cast(Pending, head)
        return head[4].position(head[1])

    def waiting(self) -> int:
        """How many packets wait in the jitter buffer."""
        return sum(len(p) if type(p) is Block else 1 for p in self._pending[self._head :])

    def release(self, limit: float) -> list[Run | LaneRun]:
        """Release, in sequence order, the waiting packets positioned before ``limit``.

        Consecutive packets of one payload type come out as one run: (payload type, codec, output
        positions, payloads), or a :class:`LaneRun` when they all come from one run of the lane, so the
        mixer decodes a run at once.
        """
        pending = self._pending
        head = self._head
        runs: list[tuple[int, RtpMap | None, list[_Piece]]] = []
        last_pt = -1
        last_codec: RtpMap | None = None
        positions: list[int] = []
        payloads: list[bytes] = []
        in_list = False  # whether the current run's last piece is `positions`/`payloads`
        released = self._released
        while head < len(pending):
            item = pending[head]
            if type(item) is Block:
                plan = item.plan
                segment = plan.segment
                if (
                    segment.started
                    and (segment.correcting or abs(segment.target - segment.anchor) > self._slack)
                    and plan.ext_ts[item.hi - 1] >= segment.moved_at
                ):
                    # the placement is on the move: packet by packet
                    pending[head : head + 1] = item.packets()
                    continue
                if not segment.started and self._last_segment is not None:
                    self._after_last(segment, plan.positions()[item.lo])
                count = plan.count_before(item.lo, item.hi, limit)
                if not count:
                    break
                segment.started = True
                end = item.lo + count
                if plan.pt != last_pt or plan.codec is not last_codec or not runs:
                    last_pt, last_codec = plan.pt, plan.codec
                    runs.append((last_pt, last_codec, [LaneRun(plan, item.lo, end)]))
                else:
                    pieces = runs[-1][2]
                    before = pieces[-1]
                    if type(before) is LaneRun and before.plan is plan and before.hi == item.lo:
                        before.hi = end
                    else:
                        pieces.append(LaneRun(plan, item.lo, end))
                in_list = False
                released = item.ext_seq + count - 1
                if self._last_segment is not segment:
                    self._frame = 0
                self._last_seq, self._last_segment, self._last_plan = released, segment, (plan, end)
                if end < item.hi:
                    pending[head] = Block(plan, end, item.hi)
                    break
                head += 1
                continue
            seq, ext_ts, pt, payload, segment, codec = cast(Pending, item)
            if self._last_plan is not None:
                self._last_from_plan()
            anchor = segment.anchor
            if (
                segment.started
                and (segment.correcting or abs(segment.target - anchor) > self._slack)
                and ext_ts >= segment.moved_at
            ):
                anchor = self._corrected(segment, ext_ts)
                pos = anchor + (ext_ts - segment.base_ts) * segment.scale
                if pos >= limit:
                    break
                segment.anchor = anchor
                segment.correcting = anchor != segment.target
            else:
                pos = anchor + (ext_ts - segment.base_ts) * segment.scale
                if not segment.started and self._last_segment is not None and self._after_last(segment, pos):
                    pos = segment.anchor + (ext_ts - segment.base_ts) * segment.scale
                if pos >= limit:
                    break
                segment.started = True
            if self._last_segment is not segment:
                self._frame = 0  # another clock, or timestamps from elsewhere
            elif seq == self._last_seq + 1 and ext_ts > self._last_ts:
                self._frame = ext_ts - self._last_ts
            self._last_seq, self._last_ts, self._last_segment, self._last_pos = seq, ext_ts, segment, pos
            if pt != last_pt or codec is not last_codec or not runs:
                positions, payloads = [], []
                runs.append((pt, codec, [(positions, payloads)]))
                last_pt, last_codec = pt, codec
                in_list = True
            elif not in_list:
                positions, payloads = [], []
                runs[-1][2].append((positions, payloads))
                in_list = True
            positions.append(round(pos))
            payloads.append(payload)
            released = seq
            head += 1
        self._released = released
        if head > 64:
            # released entries go: a lane block keeps a whole chunk of the capture alive
            del pending[:head]
            head = 0
        self._head = head
        return [_joined(pt, codec, pieces) for pt, codec, pieces in runs]

    def _last_from_plan(self) -> None:
        """The last packet released came from a lane block: its timestamp and the frame before it."""
        assert self._last_plan is not None
        plan, end = self._last_plan
        self._last_plan = None
        self._last_ts = int(plan.ext_ts[end - 1])
        self._last_pos = plan.positions()[end - 1]
        if end >= 2:
            self._frame = int(plan.ext_ts[end - 1] - plan.ext_ts[end - 2])

    def _after_last(self, segment: Segment, pos: float) -> float:
        """A new segment's first packet, at ``pos``, is about to be placed: if that is inside the audio of
        the packet before (of the segment before), the segment starts right after it instead (its anchor
        comes back to its estimate later, as any correction does). Returns how far it moved."""
        last = self._last_segment
        assert last is not None
        if self._last_plan is not None:
            self._last_from_plan()
        end = self._last_pos + self._frame * last.scale
        if pos >= end:
            return 0.0
        segment.anchor += end - pos
        return end - pos

    def _corrected(self, segment: Segment, ext_ts: int) -> float:
        """Where the anchor goes for this packet, on its way to the target: at once across a pause (the
        packet does not play right after the one before: no audio is skipped or repeated, only the
        silence is longer or shorter), else by at most ``CORRECTION_STEP_S``."""
        anchor, target = segment.anchor, segment.target
        move = target - anchor
        step = self._step
        if -step <= move <= step:
            return target
        if self._last_segment is segment and self._frame:
            # output samples of silence between the end of the packet before and this one
            pause = (ext_ts - self._last_ts - self._frame) * segment.scale
            if pause > 0:
                return target if move > 0 else anchor + max(move, -(pause + step))
        return anchor + (step if move > 0 else -step)

    @property
    def jitter_delay(self) -> float:
        return self._delay


def _joined(pt: int, codec: RtpMap | None, pieces: list[_Piece]) -> Run | LaneRun:
    """One run from its pieces."""
    if len(pieces) == 1:
        piece = pieces[0]
        return piece if type(piece) is LaneRun else (pt, codec, *cast(tuple[list[int], list[bytes]], piece))
    positions: list[int] = []
    payloads: list[bytes] = []
    for piece in pieces:
        at, data = piece.lists() if type(piece) is LaneRun else cast(tuple[list[int], list[bytes]], piece)
        positions += at
        payloads += data
    return pt, codec, positions, payloads
