"""Runs of plain IPv4/UDP RTP routed to their calls' tapes in bulk: the live capture's hot path.

:func:`route_block` gives :class:`~callrec.live.tracker.LiveTracker` a decoded
:class:`~callrec.files.pcap.UdpBlock` with the very effect of feeding its datagrams one by one. Its
datagrams that do not look like RTP (SIP, RTCP, anything else) go one by one, in order, to
``LiveTracker.datagram``; each run of RTP between them is looked at all at once (numpy): its destinations
and SSRCs are found once per run, not per packet. When every destination of the run is either bound to an
open call that already knows the packet's SSRC, bound to no open call, or bound to nothing at all (and is not
the RTCP port of a binding), nothing a packet does can change how the next one is routed, so the run is
counted and written straight to the calls' tapes in arrival order, with no per-packet objects. A datagram
that may change the routing (a new SSRC for its call, which may show a relayed leg; RTP-like packets on a
binding's RTCP port) goes alone through ``LiveTracker.datagram``, and the rest of the run is looked at anew
(after ``MAX_SPLITS`` of those, the rest goes datagram by datagram).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from callrec.files.pcap import UdpBlock
from callrec.files.pcapchunk import gather

if TYPE_CHECKING:
    from callrec.live.tracker import LiveTracker, _Call

# runs shorter than this go datagram by datagram (numpy's set-up costs more than it saves)
MIN_RUN = 16
# a run cut more often than this (many new SSRCs at once) goes datagram by datagram from there
MAX_SPLITS = 64


def route_block(tracker: LiveTracker, block: UdpBlock) -> None:
    """Feed ``block``'s datagrams to ``tracker`` in order, runs of RTP in bulk where that changes nothing."""
    n = len(block)
    if n < MIN_RUN:
        for i in range(n):
            tracker.datagram(block.datagram(i))
        return
    # what LiveTracker.datagram takes for RTP: version 2, at least 12 bytes, not an RTCP packet type
    b0, b1 = block.field(28, 1), block.field(29, 1)
    rtp = (block.length >= 12) & (b0 >> 6 == 2) & ((b1 < 192) | (b1 > 223))
    at = 0
    for i in [*np.flatnonzero(~rtp).tolist(), n]:
        splits = 0
        while at < i:
            if i - at < MIN_RUN or splits >= MAX_SPLITS:
                for j in range(at, i):
                    tracker.datagram(block.datagram(j))
                break
            at = _bulk(tracker, block, at, i)
            if at < i:  # the datagram that may change the routing goes alone
                tracker.datagram(block.datagram(at))
                splits += 1
                at += 1
        if i == n:
            break
        tracker.datagram(block.datagram(i))
        at = i + 1


def _bulk(tracker: LiveTracker, block: UdpBlock, lo: int, hi: int) -> int:
    """Route the RTP datagrams from ``lo`` at once, up to the first that may change how those after it are
    routed (a new SSRC for its call, RTP to a binding's RTCP port) or to ``hi``; returns where it stopped."""
    ip = block.ip[lo:hi]
    data, buf = block.data, block.buf
    dst = gather(data, ip + 16, 4, ">u4")
    dport = gather(data, ip + 22, 2, ">u2")
    ssrc = gather(data, ip + 36, 4, ">u4")
    keys, first, inverse = np.unique((dst << 16) | dport, return_index=True, return_inverse=True)
    bindings, calls = tracker.tracker.bindings, tracker.calls
    # per destination: the open call its packets go to, or None; whether they are RTP at all (bound); and
    # whether they go one by one (RTCP to a binding's next port: written to its call)
    targets: list[_Call | None] = []
    bound: list[bool] = []
    alone = np.zeros(len(keys), bool)
    for k, (key, f) in enumerate(zip(keys.tolist(), first.tolist(), strict=True)):
        p = int(ip[f])
        addr, port = buf[p + 16 : p + 20], key & 0xFFFF
        binding = bindings.get((addr, port))
        if binding is None:
            alone[k] = (addr, port - 1) in bindings
            targets.append(None)
            bound.append(False)
            continue
        targets.append(calls.get(id(binding.dialog)))
        bound.append(True)
    # an SSRC its open call does not know yet may join two calls: from there on, one by one
    pairs, back = np.unique((inverse.astype(np.int64) << 32) | ssrc, return_inverse=True)
    new = np.zeros(len(pairs), bool)
    for m, pair in enumerate(pairs.tolist()):
        call = targets[pair >> 32]
        new[m] = call is not None and (pair & 0xFFFFFFFF) not in call.ssrcs
    slow = np.flatnonzero(alone[inverse] | new[back])
    stop = int(slow[0]) if len(slow) else hi - lo
    if stop == 0:
        return lo
    inverse = inverse[:stop]
    counts = tracker.counts
    bound_packets = int(np.count_nonzero(np.asarray(bound)[inverse]))
    counts["rtp"] += bound_packets
    counts["unmatched"] += stop - bound_packets
    sport = gather(data, ip[:stop] + 20, 2, ">u2").tolist()
    ts = block.ts[lo : lo + stop].tolist()
    lengths = block.length[lo : lo + stop].tolist()
    written = 0
    for j, (k, p) in enumerate(zip(inverse.tolist(), ip[:stop].tolist(), strict=True)):
        call = targets[k]
        if call is None:
            continue
        t = ts[j]
        call.rtp += 1
        call.last_media = t
        try:
            call.writer.write_packed(
                t, buf[p + 12 : p + 16], sport[j], buf[p + 16 : p + 20], (buf[p + 22] << 8) | buf[p + 23],
                buf[p + 28 : p + 28 + lengths[j]],
            )  # fmt: skip
        except OSError as exc:
            tracker._tape_error(call, exc)
            continue
        written += 1
    counts["written"] += written
    return lo + stop
