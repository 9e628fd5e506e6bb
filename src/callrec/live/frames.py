"""From the ring's frames to the items the capture readers give: ``UdpBlock`` runs and ``Datagram``s.

The same split as :meth:`callrec.files.pcap.CaptureReader.batches`: the plain IPv4/UDP frames of a block
(RTP, nearly all of the traffic) are checked with numpy all at once and handed over as
:class:`~callrec.files.pcap.UdpBlock` runs over the block's bytes; every other frame (VLAN tags, IPv6,
fragments, TCP for SIP) goes through :class:`~callrec.wire.netparse.NetDecoder`, which keeps the fragment
and TCP reassembly state from one block to the next. So whatever reads a capture file's batches (the
mixer's lane, the dialog tracking) reads the live interface the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from callrec.files.pcap import COUNTERS, UdpBlock
from callrec.files.pcapchunk import gather
from callrec.live.ring import FrameBatch
from callrec.wire.netparse import PROTO_UDP, Datagram, NetDecoder, fast_path_layout


class FrameDecoder:
    """Decodes the frames of successive ring blocks of one interface; ``stats`` counts as the file reader's do
    (``packets``, ``datagrams``, ``non_ip``, ``malformed``, ``fragments``, ``tcp_segments``...)."""

    def __init__(self, linktype: int, warn: Callable[[str], None] | None = None) -> None:
        self.linktype = linktype
        self.stats = dict.fromkeys(COUNTERS, 0)
        self.warnings: list[str] = []
        self._warn = warn or self.warnings.append
        self._decoder = NetDecoder(self.stats, self._warn)
        self._layout = fast_path_layout(linktype)

    def items(self, batch: FrameBatch) -> Iterator[Datagram | UdpBlock]:
        """The datagrams of ``batch``'s frames in arrival order: runs of plain IPv4/UDP as ``UdpBlock``s."""
        n = len(batch)
        if not n:
            return
        self.stats["packets"] += n
        buf, frames, caplens, ts = batch.buf, batch.frame, batch.caplen, batch.ts
        fast = np.zeros(n, bool)
        ips = np.zeros(n, np.int64)
        lengths = np.zeros(n, np.int64)
        data = np.frombuffer(buf, np.uint8)
        if self._layout is not None:
            l2, field_at, want = self._layout
            # the checks of the file reader's inline path, on every frame at once
            fast = caplens >= l2 + 28
            cand = np.flatnonzero(fast)
            ip = frames[cand] + l2
            ok = (data[ip] == 0x45) & (data[ip + 9] == PROTO_UDP) & (gather(data, ip + 6, 2, ">u2") & 0x3FFF == 0)
            if field_at >= 0:
                ok &= (data[frames[cand] + field_at] == want[0]) & (data[frames[cand] + field_at + 1] == want[1])
            total = gather(data, ip + 2, 2, ">u2")
            ulen = gather(data, ip + 24, 2, ">u2")
            ok &= (ulen >= 8) & (ulen <= total - 20) & (total <= caplens[cand] - l2)
            fast[cand] = ok
            ips[cand] = ip
            lengths[cand] = ulen - 8
        self.stats["datagrams"] += int(np.count_nonzero(fast))
        decode, linktype = self._decoder.decode, self.linktype
        at = 0
        for i in [*np.flatnonzero(~fast).tolist(), n]:
            if i > at:
                yield UdpBlock(buf, data, ts[at:i], ips[at:i], lengths[at:i])
            if i == n:
                break
            start = int(frames[i])
            datagrams = decode(linktype, buf, start, start + int(caplens[i]), float(ts[i]))
            if datagrams:
                self.stats["datagrams"] += len(datagrams)
                yield from datagrams
            at = i + 1

    def datagrams(self, batch: FrameBatch) -> Iterator[Datagram]:
        """Every datagram of ``batch`` one by one (``UdpBlock`` runs unrolled): the simple, slower view."""
        for item in self.items(batch):
            if type(item) is UdpBlock:
                for i in range(len(item)):
                    yield item.datagram(i)
            else:
                yield item  # type: ignore[misc]
