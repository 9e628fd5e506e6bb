"""One SSRC's playout buffer: packets wait in sequence order and are released placed on the output timeline.

The timeline (:class:`callrec.media.timeline.SsrcTimeline`) queues each packet with its segment; the mixer
releases, in sequence order, the packets positioned before the output it is about to write. Releasing a
packet places it: a segment that has started plays at its anchor, which moves towards its estimate (see
:mod:`callrec.media.anchor`) by at most ``CORRECTION_STEP_S`` between two packets that play one after the
other, or at once across a pause; a new segment whose first packet would land inside the audio before it
starts right after that audio instead. Packets of the lane wait as :class:`Block` entries and come out as
:class:`LaneRun` runs unless their placement is on the move.
"""

from __future__ import annotations

import bisect
from typing import cast

from callrec.media.anchor import Segment
from callrec.media.lane import Block, LanePlan, LaneRun
from callrec.models import RtpMap

# (ext_seq, ext_ts, payload_type, payload, segment, codec)
Pending = tuple[int, int, int, bytes, Segment, RtpMap | None]
# (payload_type, codec, output positions, payloads): consecutive released packets of one payload type
Run = tuple[int, RtpMap | None, list[int], list[bytes]]
# a run is built from pieces: lists of per-packet entries, or packets of a lane run
_Piece = tuple[list[int], list[bytes]] | LaneRun


class PlayoutBuffer:
    """The packets of one SSRC waiting to be placed, and where the last one released went.

    ``pending`` is sorted by extended sequence number from ``head`` on; the timeline appends in-order
    packets to it directly (the list object never changes). ``released`` is the extended sequence number
    of the last packet released.
    """

    __slots__ = (
        "pending",
        "head",
        "released",
        "_slack",
        "_step",
        "_last_seq",
        "_last_ts",
        "_last_segment",
        "_frame",
        "_last_plan",
        "_last_pos",
    )

    def __init__(self, slack: float, step: float) -> None:
        self.pending: list[Pending | Block] = []
        self.head = 0
        self.released = -1 << 62
        self._slack = slack  # output samples the anchor may be off its estimate before it moves
        self._step = step  # output samples the anchor moves between two packets that play one after the other
        # the last packet released: its extended sequence number and timestamp, its segment, and the
        # timestamp units between consecutive packets (0: not known yet), to tell a pause from a packet
        # that plays right after it
        self._last_seq = -1 << 62
        self._last_ts = 0
        self._last_segment: Segment | None = None
        self._frame = 0
        self._last_plan: tuple[LanePlan, int] | None = None  # the last release was a lane block's, up to here
        self._last_pos = 0.0  # the last packet's output position

    def insert(self, item: Pending) -> None:
        """Queue a packet that came out of order, in sequence order."""
        pending = self.pending
        last = pending[-1]
        if (last.ext_seq + len(last) - 1 if type(last) is Block else cast(Pending, last)[0]) < item[0]:
            pending.append(item)
            return
        waiting = pending[self.head :]
        if any(type(p) is Block for p in waiting):
            pending[self.head :] = [q for p in waiting for q in (p.packets() if type(p) is Block else [p])]
        bisect.insort(cast(list[Pending], pending), item, lo=self.head)

    def next_position(self) -> float:
        """Output position of the next packet waiting to be released (infinity when none waits)."""
        if self.head == len(self.pending):
            return float("inf")
        head = self.pending[self.head]
        if type(head) is Block:
            return head.position()
        head = cast(Pending, head)
        return head[4].position(head[1])

    def waiting(self) -> int:
        """How many packets wait."""
        return sum(len(p) if type(p) is Block else 1 for p in self.pending[self.head :])

    def release(self, limit: float) -> list[Run | LaneRun]:
        """Release, in sequence order, the waiting packets positioned before ``limit``.

        Consecutive packets of one payload type come out as one run: (payload type, codec, output
        positions, payloads), or a :class:`LaneRun` when they all come from one run of the lane, so the
        mixer decodes a run at once.
        """
        pending = self.pending
        head = self.head
        runs: list[tuple[int, RtpMap | None, list[_Piece]]] = []
        last_pt = -1
        last_codec: RtpMap | None = None
        positions: list[int] = []
        payloads: list[bytes] = []
        in_list = False  # whether the current run's last piece is `positions`/`payloads`
        released = self.released
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
        self.released = released
        if head > 64:
            # released entries go: a lane block keeps a whole chunk of the capture alive
            del pending[:head]
            head = 0
        self.head = head
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
