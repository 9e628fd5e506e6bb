"""Finding the SIP calls in a capture without mixing it: what an upload is split into.

Only signalling is looked at. The plain IPv4/UDP records of a classic pcap come in blocks of arrays
(see :meth:`CaptureReader.batches`); of those only the datagrams whose first byte can start a SIP
message (an uppercase method name, or ``SIP/2.0``) are parsed, so RTP costs next to nothing.
"""

from __future__ import annotations

import os

import numpy as np

from callrec.capture.dialogs import Dialog, DialogTracker, looks_like_sip
from callrec.capture.netparse import Datagram
from callrec.capture.pcap import CaptureReader, UdpBlock
from callrec.capture.sip import StreamFramer
from callrec.models import CallInfo

PROTO_TCP = 6
PROTO_UDP = 17
# first bytes a SIP message can start with: "A".."Z" (methods and "SIP/2.0")
_FIRST_MIN, _FIRST_MAX = ord("A"), ord("Z")
# a TCP flow is keyed by (source, port, destination, port); None marks a flow that does not carry SIP
Flows = dict[tuple[bytes, int, bytes, int], StreamFramer | None]


def calls_in_capture(path: str | os.PathLike[str]) -> list[CallInfo]:
    """The SIP calls of a pcap or pcapng capture, in the order they started, with ``source="upload"``.

    A call counts when its INVITE is in the capture, it was not refused (a final response of 300 or
    more before any 2xx) and its SDP says where media goes. Raises ``CaptureError`` when the file is
    not a capture.
    """
    tracker = DialogTracker()
    framers: Flows = {}
    with CaptureReader(path) as reader:
        for item in reader.batches():
            if type(item) is UdpBlock:
                for i in _sip_candidates(item):
                    _udp(tracker, item.datagram(i))
            else:
                _datagram(tracker, framers, item)  # type: ignore[arg-type]
    calls = [_finished(d) for d in tracker.dialogs.values() if not d.failed and d.info.streams]
    calls.sort(key=lambda info: info.started_at or 0.0)
    return calls


def _sip_candidates(block: UdpBlock) -> list[int]:
    first = block.field(28, 1)
    hits = (block.length >= 8) & (first >= _FIRST_MIN) & (first <= _FIRST_MAX)
    return [int(i) for i in np.flatnonzero(hits)]


def _udp(tracker: DialogTracker, d: Datagram) -> None:
    if looks_like_sip(d.payload):
        tracker.feed(d.ts, d.payload)


def _datagram(tracker: DialogTracker, framers: Flows, d: Datagram) -> None:
    if d.proto == PROTO_UDP:
        _udp(tracker, d)
        return
    if d.proto != PROTO_TCP:
        return
    key = (d.src, d.sport, d.dst, d.dport)
    if key not in framers:
        # a flow is taken for SIP when its first payload looks like SIP, as the mixer does
        framers[key] = StreamFramer() if looks_like_sip(d.payload) else None
    framer = framers[key]
    if framer is None:
        return
    for message in framer.feed(d.payload):
        tracker.feed(d.ts, message)


def _finished(dialog: Dialog) -> CallInfo:
    info = dialog.info
    info.source = "upload"
    if info.ended_at is None and dialog.ended_at is not None:
        info.ended_at = dialog.ended_at
    return info
