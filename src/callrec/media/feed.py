"""Feeding one SSRC's packets to its timeline from arrays: runs through the lane, the rest one by one."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from callrec.media.lane import ByteRows, FloatArray, IntArray
from callrec.media.seq import seq_steps
from callrec.media.timeline import SsrcTimeline
from callrec.models import RtpMap

# a shorter run is cheaper packet by packet than planned with numpy
LANE_MIN_PACKETS = 8


class StreamFeed:
    """The packets of one SSRC from one block of a capture, in arrival order, fed to its timeline.

    ``arrival`` is each packet's output position (as ``SsrcTimeline.push`` takes it, never going back),
    ``seq``, ``ts`` and ``pt`` its RTP header fields, and its payload is ``buf[start:start + length]``
    (``data`` is ``buf`` as a numpy array). ``feed(upto)`` pushes the packets before index ``upto``:
    a run of at least ``LANE_MIN_PACKETS`` in consecutive sequence order, of one payload type and length,
    goes through the timeline's lane; everything else through ``push``. ``close`` ends a run under way.
    """

    def __init__(
        self,
        timeline: SsrcTimeline,
        arrival: FloatArray,
        seq: IntArray,
        ts: IntArray,
        pt: IntArray,
        start: IntArray,
        length: IntArray,
        data: npt.NDArray[np.uint8],
        buf: bytes,
        codec_of: Callable[[int], RtpMap | None],
    ) -> None:
        self.timeline = timeline
        self._arrival, self._seq, self._ts, self._pt = arrival, seq, ts, pt
        self._start, self._length = start, length
        self._data, self._buf = data, buf
        self._codec_of = codec_of
        breaks = (seq_steps(seq) != 1) | (pt[1:] != pt[:-1]) | (length[1:] != length[:-1])
        self._run_ends = [*(np.flatnonzero(breaks) + 1).tolist(), len(seq)]
        self.done = 0  # packets pushed or taken
        self._plan_start = 0
        self._plan_end = 0  # packets [done, _plan_end) belong to the run under way in the lane

    def feed(self, upto: int) -> None:
        """Push the packets before index ``upto``."""
        i = self.done
        timeline = self.timeline
        while i < upto:
            if i < self._plan_end:
                i = min(upto, self._plan_end)
                timeline.take(i - self._plan_start)
                continue
            if self._plan_end:
                timeline.settle()
                self._plan_end = 0
            end = self._run_ends[bisect_right(self._run_ends, i)]
            if end - i >= LANE_MIN_PACKETS and self._length[i] > 0:
                pt = int(self._pt[i])
                if timeline.lane_ready(int(self._seq[i]), pt, self._codec_of(pt)):
                    size = timeline.plan(self._arrival[i:end], self._ts[i:end], self._rows(i, end))
                    if size:
                        self._plan_start, self._plan_end = i, i + size
                        continue
            self._push(i)
            i += 1
        self.done = i

    def close(self) -> None:
        """End the run under way: the timeline settles what it took."""
        if self._plan_end:
            self.timeline.settle()
            self._plan_end = 0

    def _rows(self, lo: int, hi: int) -> ByteRows:
        """The payloads of packets [lo, hi), all of one length, one per row."""
        width = int(self._length[lo])
        start = self._start[lo:hi]
        step = np.diff(start)
        if len(step) and step[0] > 0 and bool((step == step[0]).all()):
            # evenly spaced in the chunk (the common case: the same records, in the same order): a view
            rows: ByteRows = as_strided(
                self._data[int(start[0]) :], shape=(hi - lo, width), strides=(int(step[0]), 1), writeable=False
            )
            return rows
        gathered: ByteRows = self._data[start[:, None] + np.arange(width)]
        return gathered

    def _push(self, i: int) -> None:
        pt = int(self._pt[i])
        start = int(self._start[i])
        self.timeline.push(
            float(self._arrival[i]),
            int(self._seq[i]),
            int(self._ts[i]),
            pt,
            self._buf[start : start + int(self._length[i])],
            self._codec_of(pt),
        )
