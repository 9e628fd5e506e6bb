"""Finding the SIP calls in a capture without mixing it: what an upload is split into.

Only signalling is looked at. The plain IPv4/UDP records of a classic pcap come in blocks of arrays
(see :meth:`CaptureReader.batches`); of those only the datagrams whose first byte can start a SIP
message (an uppercase method name, or ``SIP/2.0``) are parsed, so RTP costs next to nothing.
"""

from __future__ import annotations

import heapq
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from callrec.files.pcap import CaptureReader, UdpBlock
from callrec.files.pcapwriter import PcapWriter
from callrec.models import CallInfo
from callrec.wire.dialogs import Dialog, DialogTracker, looks_like_sip
from callrec.wire.netparse import Datagram
from callrec.wire.sip import StreamFramer

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


# per-call media files kept open at once while splitting (the others are reopened to append)
OPEN_WRITERS = 64


class _Writers:
    """One pcap per dialog under ``folder``, at most ``OPEN_WRITERS`` files open at a time (the least
    recently written one is closed, and reopened to append when its call sends again)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: dict[int, Path] = {}
        self._writers: dict[int, PcapWriter] = {}
        self._open: OrderedDict[int, PcapWriter] = OrderedDict()
        # the dialogs (by id) whose files go into another's: the call they joined -> its legs
        self.joined: dict[int, list[int]] = {}

    def write(self, dialog: Dialog, d: Datagram, payload: bytes) -> None:
        key = id(dialog)
        writer = self._open.get(key)
        if writer is None:
            writer = self._writers.get(key)
            if writer is None:
                path = self.paths[key] = self.folder / f"{len(self.paths)}.pcap"
                writer = self._writers[key] = PcapWriter(path)
            else:
                writer.reopen()
            self._open[key] = writer
            if len(self._open) > OPEN_WRITERS:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(key)
        writer.write(d.ts, d.src, d.sport, d.dst, d.dport, payload)

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def join(self, into: Dialog, other: Dialog) -> None:
        """``other`` became a leg of ``into``: what was written for it goes into ``into``'s file (at the end)."""
        self.joined.setdefault(id(into), []).append(id(other))
        self.joined[id(into)] += self.joined.pop(id(other), [])

    def fold(self, dialog: Dialog) -> Path | None:
        """The file of ``dialog`` with the files of the legs that joined it merged in, in time order."""
        path = self.paths.get(id(dialog))
        legs = [self.paths[k] for k in self.joined.get(id(dialog), []) if k in self.paths]
        if not legs:
            return path
        parts = [p for p in (path, *legs) if p is not None]
        merged = parts[0].with_name(f"{parts[0].stem}-joined.pcap")
        readers = [CaptureReader(p) for p in parts]
        try:
            writer = PcapWriter(merged)
            try:
                for d in heapq.merge(*(iter(r) for r in readers), key=lambda d: d.ts):
                    writer.write(d.ts, d.src, d.sport, d.dst, d.dport, d.payload)
            finally:
                writer.close()
        finally:
            for reader in readers:
                reader.close()
        for part in parts:
            part.unlink(missing_ok=True)
        return merged


def split_capture(path: str | os.PathLike[str], folder: Path) -> list[tuple[CallInfo, Path]]:
    """``calls_in_capture`` and, in the same single pass, each call's own packets in a pcap of its own.

    A call's file (under ``folder``) holds its SIP messages and the UDP sent to (or, for RTCP, next to)
    an address its SDP gave at that moment — the same endpoint map ``DialogTracker`` keeps for the
    mixer. So a capture of many calls is read once, and mixing one call reads only that call's packets.
    Files of dialogs that do not count as calls are removed.
    """
    tracker = DialogTracker()
    framers: Flows = {}
    writers = _Writers(folder)
    try:
        with CaptureReader(path) as reader:
            for item in reader.batches():
                if type(item) is UdpBlock:
                    first = item.field(28, 1)
                    for i in range(len(item)):
                        d = item.datagram(i)
                        sip = bool(_FIRST_MIN <= first[i] <= _FIRST_MAX and len(d.payload) >= 8)
                        _route(tracker, framers, writers, d, sip)
                else:
                    _route(tracker, framers, writers, item, None)  # type: ignore[arg-type]
    finally:
        writers.close()
    found: list[tuple[CallInfo, Path]] = []
    for dialog in tracker.dialogs.values():
        media = writers.fold(dialog)
        if dialog.failed or not dialog.info.streams or media is None:
            if media is not None:
                media.unlink(missing_ok=True)
            continue
        found.append((_finished(dialog), media))
    found.sort(key=lambda pair: pair[0].started_at or 0.0)
    return found


def _route(tracker: DialogTracker, framers: Flows, writers: _Writers, d: Datagram, sip: bool | None) -> None:
    """One datagram of the capture into the file of the call it belongs to, if any."""
    if d.proto == PROTO_TCP:
        key = (d.src, d.sport, d.dst, d.dport)
        if key not in framers:
            framers[key] = StreamFramer() if looks_like_sip(d.payload) else None
        framer = framers[key]
        if framer is not None:
            for message in framer.feed(d.payload):
                dialog = tracker.feed(d.ts, message)
                if dialog is not None:  # kept as a datagram of the flow: the tape is UDP only
                    writers.write(dialog, d, message)
        return
    if d.proto != PROTO_UDP:
        return
    if (sip is None or sip) and looks_like_sip(d.payload):
        dialog = tracker.feed(d.ts, d.payload)
        if dialog is not None:
            writers.write(dialog, d, d.payload)
        return
    binding = tracker.bindings.get((d.dst, d.dport))
    ssrc = _rtp_ssrc(d.payload) if binding is not None else None
    if binding is not None and ssrc is not None:
        # a call whose SSRC another live call has (a proxy masking the Call-ID) joins it, with its file
        before = binding.dialog
        binding = tracker.note_ssrc((d.dst, d.dport), ssrc, d.ts, d.src) or binding
        if binding.dialog is not before:
            writers.join(binding.dialog, before)
    if binding is None and d.dport & 1:  # RTCP, on the port after the RTP's
        binding = tracker.bindings.get((d.dst, d.dport - 1))
    if binding is not None:
        writers.write(binding.dialog, d, d.payload)


def _rtp_ssrc(payload: bytes) -> int | None:
    """The SSRC of an RTP packet (not RTCP, whose packet types are RTP's payload types 64-95 with the marker)."""
    if len(payload) < 12 or payload[0] >> 6 != 2 or 192 <= payload[1] <= 223:
        return None
    return int.from_bytes(payload[8:12], "big")


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
