"""Anchoring one stream's RTP timestamps to arrival time: segments and the sliding window of least delays.

A packet's place on the output timeline comes from its RTP timestamp, anchored to arrival time. The
estimate (a segment's ``target``) is the smallest ``arrival - rtp_time`` seen over a sliding 3-second
window, i.e. the least delayed packet: packets held back and delivered late in a burst arrive later than
their timestamps say, so they never pull it, and network jitter does not shift the audio, while sender
clock drift and network delay changes are followed.

Until a segment's first packet is released its placement (``anchor``) simply is the estimate, so a
stream whose first packets came late is placed where it really starts. Once audio of it has been placed,
the placement moves only when the estimate has drifted more than ``ANCHOR_SLACK_S`` away, and then by at
most ``CORRECTION_STEP_S`` between two packets that play one after the other, or at once across a silence
(no audio is skipped or repeated; :mod:`callrec.media.playout` moves it). A genuine discontinuity (the
timestamps jump by more than ``REANCHOR_S`` against arrival, a new clock) starts a new segment, placed
afresh.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

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

    def next_bucket(self, arrival: float, bucket: float) -> None:
        """Close the anchor bucket at ``arrival`` (the next is ``bucket`` long): the estimate becomes the
        least offset of the window."""
        self.history.append(self.bucket_min)
        self.bucket_min = float("inf")
        self.bucket_end = arrival + bucket
        self.follow(min(self.history))
