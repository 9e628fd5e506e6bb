"""The vectorised lane, capture side: a block of datagrams → its plain RTP, stream by stream → timelines.

A classic pcap is read a chunk at a time (:class:`~callrec.files.pcap.UdpBlock`, arrays over the chunk).
:class:`BlockLane` finds the block's plain RTP (no CSRCs, extension or padding; never earlier than the
packet before) of streams that already have a route, and hands everything else on, in capture order, to
the per-packet path (:class:`~callrec.mix.demux.Demux`). Each stream's packets go to its timeline through
a :class:`StreamFeed`: runs through the timeline's own lane (:mod:`callrec.media.lane`), the rest one
by one; the mixers are ticked on the way exactly as the per-packet loop ticks them, so the output is the
same to the last bit.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from callrec.files.pcap import UdpBlock
from callrec.media.lane import ByteRows, FloatArray, IntArray
from callrec.media.seq import seq_steps
from callrec.media.timeline import SsrcTimeline
from callrec.models import RtpMap
from callrec.wire.netparse import Datagram

if TYPE_CHECKING:
    from callrec.mix.demux import Demux, Route, StreamKey

# a shorter run is cheaper packet by packet than planned with numpy
LANE_MIN_PACKETS = 8
# where the RTP header's fields sit, counted from a block's IPv4 header (20 bytes of IPv4, 8 of UDP)
_B0, _B1, _SEQ, _TS, _SSRC, _PAYLOAD = 28, 29, 30, 32, 36, 40
_DST_ADDR, _DST_PORT = 16, 22


class BlockLane:
    """Takes the plain RTP of known streams out of each block for ``demux``."""

    def __init__(self, demux: Demux) -> None:
        self.demux = demux

    def datagrams(self, items: Iterator[Datagram | UdpBlock]) -> Iterator[Datagram]:
        """What the per-packet path still has to see, in capture order."""
        for item in items:
            if type(item) is UdpBlock:
                yield from self._block(item)
            else:
                yield item  # type: ignore[misc]

    def _block(self, block: UdpBlock) -> Iterator[Datagram]:
        n = len(block)
        b0, b1 = block.field(_B0, 1), block.field(_B1, 1)
        # RTP without CSRCs, extension or padding (not RTCP), and never earlier than the packet before
        plain = (block.length >= 12) & (b0 == 0x80) & ((b1 < 192) | (b1 > 223))
        plain[1:] &= block.ts[1:] >= block.ts[:-1]
        cand = np.flatnonzero(plain)
        if not len(cand):
            for i in range(n):
                yield block.datagram(i)
            return
        # streams: (destination address, port, SSRC), numbered by one 64-bit key
        endpoint = (block.field(_DST_ADDR, 4)[cand] << 16) | block.field(_DST_PORT, 2)[cand]
        ssrcs, ssrc_no = np.unique(block.field(_SSRC, 4)[cand], return_inverse=True)
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
        header = (block.field(_SEQ, 2), block.field(_TS, 4), b1 & 0x7F)  # sequence number, timestamp, PT
        pos, epoch, slow = 0, -1, [n]
        routes: list[Route | None] = []
        demux = self.demux
        while pos < n:
            if epoch != demux.epoch:
                # which streams the lane takes: those with a route (the first packet of one makes it)
                epoch = demux.epoch
                routes = self._routes(stream_keys)
                ok = np.array([r is not None for r in routes] + [False])[key[:n]]
                slow = [*np.flatnonzero(~ok).tolist(), n]
            stop = slow[bisect_left(slow, pos)]
            if stop == pos:
                yield block.datagram(pos)
                pos += 1
                continue
            pos = self._stretch(block, pos, stop, routes, members, times, header)

    def _routes(self, stream_keys: list[StreamKey]) -> list[Route | None]:
        """The route of each stream, or None when its packets must take the per-packet path."""
        routes = [self.demux.routes.get(k) for k in stream_keys]
        timelines = [id(r.timeline) for r in routes if r is not None and r.timeline is not None]
        shared = {t for t in timelines if timelines.count(t) > 1}
        # two endpoints feeding one timeline would interleave two runs in it: not for the lane
        return [None if r is not None and id(r.timeline) in shared else r for r in routes]

    def _stretch(
        self,
        block: UdpBlock,
        start: int,
        stop: int,
        routes: list[Route | None],
        members: list[IntArray],
        times: list[float],
        header: tuple[IntArray, IntArray, IntArray],
    ) -> int:
        """Feed the block's packets [start, stop), all plain RTP of streams with a route, ticking the
        mixers on the way exactly as the per-packet loop does; return where it stopped (at ``stop``, or
        earlier when a tick changed the routes)."""
        demux = self.demux
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
                block.ip[sel] + _PAYLOAD,  # the RTP payload: after IPv4, UDP and the 12-byte RTP header
                block.length[sel] - 12,
                block.data,
                block.buf,
                demux.codec_lookup(route),
            )
            feeds.append((sel.tolist(), feed))
        epoch = demux.epoch
        at = start
        try:
            while True:
                tick = bisect_left(times, demux.next_tick, at, stop)
                for sel_list, feed in feeds:
                    feed.feed(bisect_left(sel_list, tick))
                if tick >= stop:
                    demux.now = times[stop - 1]
                    return stop
                now = demux.now = times[tick]
                demux.tick(now)
                if demux.epoch != epoch:
                    return tick
                at = tick
        finally:
            for _, feed in feeds:
                feed.close()
                demux.counts["rtp"] += feed.done


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
