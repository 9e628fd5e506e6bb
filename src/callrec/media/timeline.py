"""Per-SSRC sequencing: de-duplication, reordering, loss and jitter figures, and anchoring to arrival time.

Every packet gets a position on the call's output timeline (in output samples from t = 0, the call's first
media packet). The position comes from the packet's RTP timestamp, anchored to arrival time: the anchor is
the smallest ``arrival - rtp_time`` seen over a sliding window, i.e. the least delayed packet, so network
jitter does not shift the audio, while sender clock drift, timestamp jumps and silence suppression are
followed. Packets wait in a small jitter buffer and are released in sequence order once the timeline has
moved ``JITTER_DELAY_S`` past them.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from callrec.capture.sdp import RtpMap
from callrec.media.seq import unwrap_seq, unwrap_ts

# release a packet this long after its slot: reordering/jitter up to 200 ms must still be absorbed
JITTER_DELAY_S = 0.4
# the anchor is the least-delayed packet of this window; short enough to follow clock drift
ANCHOR_WINDOW_S = 3.0
# the anchor moves only by more than this, so jitter does not make small gaps and overlaps
ANCHOR_SLACK_S = 0.005
# a packet arriving this much later than its timestamp says means the sender's clock jumped: re-anchor
REANCHOR_S = 0.5
# forget sequence numbers this far behind the newest (duplicate detection stays bounded)
SEEN_HORIZON = 4096
DEFAULT_CLOCK_RATE = 8000


@dataclass(slots=True)
class Segment:
    """A run of packets whose timestamps share one clock and one anchor."""

    base_ts: int
    clock_rate: int
    scale: float  # output samples per RTP timestamp unit
    anchor: float  # output position of base_ts
    window: deque[tuple[float, float]] = field(default_factory=deque)

    def position(self, ext_ts: int) -> float:
        return self.anchor + (ext_ts - self.base_ts) * self.scale


@dataclass(slots=True)
class StreamStats:
    """Quality figures of one SSRC, as reported by ``callrec mix --json``."""

    ssrc: int
    party: str
    codecs: dict[str, int] = field(default_factory=dict)
    packets: int = 0
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


class SsrcTimeline:
    """One SSRC of one party: orders its packets and positions them on the output timeline."""

    def __init__(self, ssrc: int, party: str, out_rate: int) -> None:
        self.ssrc = ssrc
        self.party = party
        self.out_rate = out_rate
        self.stats = StreamStats(ssrc=ssrc, party=party)
        self._heap: list[Pending] = []
        self._seen: set[int] = set()
        self._released = -1 << 62
        self._ref_ts: int | None = None
        self._segment: Segment | None = None
        self._transit: float | None = None
        self._jitter = 0.0
        self.signal_end = 0.0  # output position where the last telephone-event or comfort noise ends
        self._delay = JITTER_DELAY_S * out_rate
        self._window = ANCHOR_WINDOW_S * out_rate
        self._slack = ANCHOR_SLACK_S * out_rate
        self._reanchor = REANCHOR_S * out_rate

    def push(self, arrival: float, seq: int, ts: int, pt: int, payload: bytes, codec: RtpMap | None) -> None:
        """Take one packet that arrived at output position ``arrival``."""
        stats = self.stats
        stats.packets += 1
        # sequence: duplicates, reordering, late arrivals
        if stats.max_seq is None:
            ext_seq = seq
            stats.first_seq = stats.max_seq = seq
            self._ref_ts = ts
        else:
            ext_seq = unwrap_seq(seq, stats.max_seq)
            if ext_seq in self._seen:
                stats.duplicates += 1
                return
            if ext_seq < stats.max_seq:
                stats.reordered += 1
                if stats.first_seq is not None and ext_seq < stats.first_seq:
                    stats.first_seq = ext_seq
            else:
                stats.max_seq = ext_seq
        self._seen.add(ext_seq)
        if len(self._seen) > 2 * SEEN_HORIZON:
            horizon = stats.max_seq - SEEN_HORIZON
            self._seen = {s for s in self._seen if s > horizon}
        stats.received += 1
        assert self._ref_ts is not None
        ext_ts = unwrap_ts(ts, self._ref_ts)
        if ext_seq == stats.max_seq:
            self._ref_ts = ext_ts
        if ext_seq <= self._released:
            stats.late += 1
            return
        # what the payload is: telephone-events and comfort noise are counted, never decoded
        if codec is not None:
            name = codec.encoding.lower()
            if name == "telephone-event":
                stats.events += 1
                # the event lasts from its timestamp for its duration (RFC 4733 section 2.3)
                units = int.from_bytes(payload[2:4], "big") if len(payload) >= 4 else 0
                self._note_signal(ext_ts + units, codec.clock_rate)
                return
            if name == "cn":
                stats.comfort_noise += 1
                self._note_signal(ext_ts, codec.clock_rate)
                return
            stats.codecs[codec.name] = stats.codecs.get(codec.name, 0) + 1
            clock = codec.clock_rate
        else:
            stats.codecs[f"PT{pt}"] = stats.codecs.get(f"PT{pt}", 0) + 1
            clock = DEFAULT_CLOCK_RATE
        # RFC 3550 section 6.4.1 interarrival jitter, in timestamp units
        transit = arrival / self.out_rate * clock - ext_ts
        if self._transit is not None:
            self._jitter += (abs(transit - self._transit) - self._jitter) / 16.0
            if self._jitter / clock > stats.max_jitter:
                stats.max_jitter = self._jitter / clock
        self._transit = transit
        segment = self._anchor(arrival, ext_ts, clock)
        heapq.heappush(self._heap, (ext_seq, ext_ts, pt, payload, segment, codec))

    def _note_signal(self, ext_ts: int, clock: int) -> None:
        """Remember where a non-audio packet ends: the recording lasts until the last media, not the last speech."""
        segment = self._segment
        if segment is not None and segment.clock_rate == clock:
            self.signal_end = max(self.signal_end, segment.position(ext_ts))

    def _anchor(self, arrival: float, ext_ts: int, clock: int) -> Segment:
        segment = self._segment
        if segment is None or segment.clock_rate != clock:
            # a new clock (first packet, or a codec change to another clock rate) starts a new segment
            segment = self._new_segment(arrival, ext_ts, clock)
            self._transit = None
        offset = arrival - (ext_ts - segment.base_ts) * segment.scale
        if offset - segment.anchor > self._reanchor:
            segment = self._new_segment(arrival, ext_ts, clock)
            offset = arrival
        window = segment.window
        while window and window[-1][1] >= offset:
            window.pop()
        window.append((arrival, offset))
        while window[0][0] < arrival - self._window:
            window.popleft()
        best = window[0][1]
        if abs(best - segment.anchor) > self._slack:
            segment.anchor = best
        return segment

    def _new_segment(self, arrival: float, ext_ts: int, clock: int) -> Segment:
        self._segment = Segment(ext_ts, clock, self.out_rate / clock, arrival)
        return self._segment

    def next_position(self) -> float:
        """Output position of the next packet waiting to be released (infinity when none waits)."""
        if not self._heap:
            return float("inf")
        head = self._heap[0]
        return head[4].position(head[1])

    def release(self, limit: float) -> list[tuple[int, int, bytes, RtpMap | None]]:
        """Release, in sequence order, the waiting packets positioned before ``limit``.

        Returns (position, payload type, payload, codec) for each.
        """
        heap = self._heap
        out: list[tuple[int, int, bytes, RtpMap | None]] = []
        while heap:
            head = heap[0]
            pos = head[4].position(head[1])
            if pos >= limit:
                break
            heapq.heappop(heap)
            self._released = head[0]
            out.append((int(round(pos)), head[2], head[3], head[5]))
        return out

    @property
    def jitter_delay(self) -> float:
        return self._delay
