"""The timeline's vectorised lane: a run of plain in-order packets of one SSRC taken at once, with numpy.

An hour-long call is 360,000 packets, nearly all of them the next in sequence, of the same payload type,
arriving about when their timestamps say. :meth:`SsrcTimeline.push` handles every packet the same way,
one at a time; the lane takes such a run as arrays and does exactly what ``push`` would have done for
each packet — the same figures, anchors and positions, to the last bit — and anything unusual (loss,
reordering, a duplicate, a clock jump, another payload type) stays with ``push``.

A run is planned once (:func:`plan_anchor` replays the anchor's 0.5 s buckets), then taken piece by
piece as the capture clock moves (each piece waits in the jitter buffer as one :class:`Block`), and
settled at its end, when the timeline's per-packet state is brought to where ``push`` would have left it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from callrec.media.codecs.base import Decoder, PcmArray
from callrec.models import RtpMap

if TYPE_CHECKING:
    from callrec.media.anchor import Segment
    from callrec.media.playout import Pending

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
ByteRows = npt.NDArray[np.uint8]  # one row per packet, every payload of one length


class LanePlan:
    """A run of packets a timeline takes through the lane, and the anchor's course along it."""

    __slots__ = (
        "segment", "pt", "codec", "ext_seq", "ext_ts", "arrival", "payloads", "offsets", "size", "anchors",
        "rollovers", "bucket_min", "taken", "next_anchor", "_relative", "_monotonic", "_anchor", "_at",
        "_at_int", "_breaks",
    )

    def __init__(
        self,
        segment: Segment,
        pt: int,
        codec: RtpMap | None,
        ext_seq: int,
        ext_ts: IntArray,
        arrival: FloatArray,
        payloads: ByteRows,
        offsets: FloatArray,
        course: AnchorCourse,
    ) -> None:
        self.segment = segment
        self.pt = pt
        self.codec = codec
        self.ext_seq = ext_seq  # extended sequence number of the first packet
        self.ext_ts = ext_ts
        self.arrival = arrival
        self.payloads = payloads
        self.offsets = offsets  # arrival - timestamp position, per packet
        self.size = course.size  # packets the lane may take (the run is cut before a clock jump)
        # (packet index, the segment's estimate once that packet is in, whether it dropped at once there)
        self.anchors = course.anchors
        self.rollovers = course.rollovers  # (packet index, bucket history, bucket end) where buckets close
        self.bucket_min = segment.bucket_min  # the segment's bucket minimum before the run
        self.taken = 0
        self.next_anchor = 0  # the first entry of ``anchors`` not applied yet
        # output positions are anchor + relative, exactly as Segment.position computes them
        self._relative: FloatArray = ((ext_ts - segment.base_ts) * segment.scale).astype(np.float64)
        self._monotonic = bool(np.all(self._relative[1:] >= self._relative[:-1]))
        self._anchor: float | None = None  # the anchor the positions below were computed for
        self._at: list[float] = []
        self._at_int: list[int] = []
        self._breaks: list[int] = []  # packets that do not follow the one before without a gap

    def take(self, count: int, pending: list[Pending | Block]) -> None:
        """The first ``count`` packets have arrived: queue the new ones, move the anchor as push would."""
        start = self.taken
        if count <= start:
            return
        pending.append(Block(self, start, count))
        self.taken = count
        anchors = self.anchors
        i = self.next_anchor
        while i < len(anchors) and anchors[i][0] < count:
            at, target, dropped = anchors[i]
            if dropped:
                self.segment.moved_at = int(self.ext_ts[at])
            self.segment.follow(target)
            i += 1
        self.next_anchor = i

    def positions(self) -> list[float]:
        """Every packet's output position for the segment's anchor now (computed once per anchor)."""
        anchor = self.segment.anchor
        if anchor != self._anchor:
            at = anchor + self._relative
            rounded = np.rint(at).astype(np.int64)
            width = self.payloads.shape[1]
            self._at, self._at_int = at.tolist(), rounded.tolist()
            self._breaks = (np.flatnonzero(rounded[1:] != rounded[:-1] + width) + 1).tolist()
            self._anchor = anchor
        return self._at

    def count_before(self, lo: int, hi: int, limit: float) -> int:
        """How many packets from ``lo`` on (up to ``hi``) come before the first positioned at ``limit`` or later."""
        at = self.positions()
        if self._monotonic:
            return bisect_left(at, limit, lo, hi) - lo
        i = lo
        while i < hi and at[i] < limit:
            i += 1
        return i - lo

    def settle_buckets(self) -> None:
        """Leave the segment's anchor buckets as push would have left them after the taken packets."""
        segment, taken = self.segment, self.taken
        indices = [r[0] for r in self.rollovers]
        last = bisect_left(indices, taken) - 1
        if last < 0:
            first, floor = 0, self.bucket_min
        else:
            at, history, segment.bucket_end = self.rollovers[last]
            segment.history.clear()
            segment.history.extend(history)
            first, floor = at + 1, float("inf")
        if first < taken:
            floor = min(floor, float(self.offsets[first:taken].min()))
        segment.bucket_min = floor


class Block:
    """Packets ``lo`` to ``hi`` of a lane run, waiting in the timeline's jitter buffer."""

    __slots__ = ("plan", "lo", "hi", "ext_seq")

    def __init__(self, plan: LanePlan, lo: int, hi: int) -> None:
        self.plan = plan
        self.lo = lo
        self.hi = hi
        self.ext_seq = plan.ext_seq + lo  # extended sequence number of the first packet

    def __len__(self) -> int:
        return self.hi - self.lo

    def position(self) -> float:
        """The first packet's output position."""
        return self.plan.positions()[self.lo]

    def packets(self) -> list[Pending]:
        """The block as the per-packet entries ``push`` would have made."""
        plan, lo = self.plan, self.lo
        return [
            (plan.ext_seq + i, ts, plan.pt, plan.payloads[i].tobytes(), plan.segment, plan.codec)
            for i, ts in enumerate(plan.ext_ts[lo : self.hi].tolist(), lo)
        ]


class LaneRun:
    """Released packets ``lo`` to ``hi`` of a lane run: a run of one payload type, for the mixer."""

    __slots__ = ("plan", "lo", "hi")

    def __init__(self, plan: LanePlan, lo: int, hi: int) -> None:
        self.plan = plan
        self.lo = lo
        self.hi = hi

    @property
    def pt(self) -> int:
        return self.plan.pt

    @property
    def codec(self) -> RtpMap | None:
        return self.plan.codec

    def last_position(self) -> int:
        self.plan.positions()
        return self.plan._at_int[self.hi - 1]

    def payloads(self) -> ByteRows:
        """One row per payload (every payload of the run has the same length)."""
        return self.plan.payloads[self.lo : self.hi]

    def pieces(self) -> list[tuple[int, int, int]]:
        """The run cut where packets do not follow each other without a gap: (output position, first
        packet, end packet), packets counted from the run's start, as the mixer places them."""
        plan, lo, hi = self.plan, self.lo, self.hi
        plan.positions()
        breaks = plan._breaks
        cuts = [lo, *breaks[bisect_right(breaks, lo) : bisect_left(breaks, hi)], hi]
        at = plan._at_int
        return [(at[a], a - lo, b - lo) for a, b in zip(cuts, cuts[1:], strict=False)]

    def decoded(self, decoder: Decoder) -> PcmArray:
        """The run's payloads decoded by a G.711-like decoder (one sample per byte, no state). Decoded run
        by run (a second of audio), not the whole lane run at once: that kept ~0.4 MB a stream alive for
        as long as any of its packets waited, and such transient arrays made peak RSS grow with the call."""
        return decoder.decode(self.payloads().tobytes())

    def lists(self) -> tuple[list[int], list[bytes]]:
        """Positions and payloads as a per-packet run has them."""
        self.plan.positions()
        return self.plan._at_int[self.lo : self.hi], [row.tobytes() for row in self.payloads()]


@dataclass(slots=True)
class AnchorCourse:
    """What :func:`plan_anchor` finds."""

    size: int
    anchors: list[tuple[int, float, bool]] = field(default_factory=list)
    rollovers: list[tuple[int, tuple[float, ...], float]] = field(default_factory=list)


def plan_anchor(
    segment: Segment, arrival: list[float], offsets: FloatArray, bucket: float, slack: float, reanchor: float
) -> AnchorCourse:
    """Replay ``SsrcTimeline.push``'s estimate over a run whose arrivals never go back in time.

    Buckets close at the packets whose arrival reaches the bucket's end; within one bucket, when no offset
    goes under the estimate or jumps past ``reanchor``, the bucket's minimum is all that matters, so only
    buckets where something happens are replayed packet by packet. The run ends before a clock jump (which
    push decides: a new segment, or the first estimate of a segment nothing of which is placed yet).
    """
    n = len(arrival)
    closing: list[int] = []
    end = segment.bucket_end
    i = 0
    while True:
        i = bisect_left(arrival, end, i)
        if i >= n:
            break
        closing.append(i)
        end = arrival[i] + bucket
        i += 1
    starts = [0, *(c + 1 for c in closing)]
    if starts[-1] >= n:
        starts.pop()
    lows = np.minimum.reduceat(offsets, starts).tolist()
    highs = np.maximum.reduceat(offsets, starts).tolist()
    course = AnchorCourse(n)
    target = segment.target
    floor = segment.bucket_min
    history = deque(segment.history, maxlen=segment.history.maxlen)
    for j, start in enumerate(starts):
        stop = closing[j] + 1 if j < len(closing) else n
        if highs[j] - target > reanchor or lows[j] < target:
            for k, offset in enumerate(offsets[start:stop].tolist(), start):
                if offset - target > reanchor or target - offset > reanchor:
                    course.size = k  # push decides here
                    return course
                if offset < target:
                    course.anchors.append((k, offset, target - offset > slack))
                    target = offset
                if offset < floor:
                    floor = offset
        elif lows[j] < floor:
            floor = lows[j]
        if j < len(closing):
            # the bucket closes: the estimate becomes the window's least offset
            history.append(floor)
            floor = float("inf")
            best = min(history)
            if best != target:
                target = best
                course.anchors.append((stop - 1, target, False))
            course.rollovers.append((stop - 1, tuple(history), arrival[stop - 1] + bucket))
    return course


def jitter_course(
    transits: list[float], transit: float | None, jitter: float, peak: float
) -> tuple[float | None, float, float]:
    """RFC 3550 interarrival jitter over a run, exactly as ``push`` updates it: (last transit, jitter,
    highest jitter)."""
    for t in transits:
        if transit is not None:
            jitter = jitter + (abs(t - transit) - jitter) / 16.0
            if jitter > peak:
                peak = jitter
        transit = t
    return transit, jitter, peak
