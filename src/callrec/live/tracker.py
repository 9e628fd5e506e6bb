"""From the datagrams seen on an interface to one tape per call, as the call happens.

SIP (over UDP, and over TCP reassembled and cut into messages) goes to the same
:class:`~callrec.wire.dialogs.DialogTracker` ``callrec mix`` follows a capture with: each dialog's initial
INVITE opens a tape (source ``capture``) under ``DATA/tapes``; the SDP of both directions says where each
party receives media, so RTP (and RTCP, on the next port or multiplexed) sent there is written to its call's
tape; re-INVITEs and UPDATEs move those bindings; a proxy's legs of one call (same Call-ID, a topoh-masked
Call-ID, or relayed RTP with the same SSRC) are one dialog, so one tape. Every message and packet of a call
is written as it came (``media.pcap``; a SIP message that came over TCP is written as one UDP datagram
between the same addresses and ports), ``call.json`` when the call's parties or streams change. Except SDES
keys: an SDP ``a=crypto`` key is written as ``*`` of its length (``wire/sdes_redact.py``), the key sealed with
the service's secret box in ``call.json`` (``srtp``, by sending party, ``m=`` line and tag), where the mixer
opens it; no key is written in clear.

A tape is closed ``end_grace_s`` after its call's BYE, CANCEL or final failure (RTP may trail them), when
neither media for ``media_timeout_s`` nor SIP for ``sip_timeout_s`` came, or on shutdown; a call that was
never answered and carried no RTP leaves no tape (``on_discarded``). Closed calls are forgotten at once;
at most ``max_calls`` are open, further INVITEs are counted and not followed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from callrec.config import ConfigError
from callrec.errors import CallrecError, ParseError
from callrec.files import tape
from callrec.files.pcap import UdpBlock
from callrec.live.bulk import route_block
from callrec.live.domains import DomainRule
from callrec.media.srtp_keys import seal_sdp_keys
from callrec.models import MAX_SRTP_KEYS
from callrec.recorder.recovery import TapeRegistry
from callrec.recorder.srtp import SrtpKeys
from callrec.wire.dialogs import Binding, Dialog, DialogTracker, looks_like_sip
from callrec.wire.netparse import Datagram
from callrec.wire.sdes_redact import redact_crypto
from callrec.wire.sip import SipMessage, StreamFramer

log = logging.getLogger("callrec.capture")

SOURCE = "capture"
# TCP connections whose SIP is being cut into messages at once; the least recently used goes beyond
MAX_TCP_STREAMS = 4096
TapeEvent = Callable[[Path], object]
# how often the open calls are looked over (ends, timeouts, flushes), at most
CHECK_S = 0.25


@dataclass(slots=True)
class TrackerSettings:
    """Where tapes go and when calls end (the defaults are the SIPREC recorder's)."""

    tapes_dir: Path
    domain: DomainRule = field(default_factory=DomainRule)
    media_timeout_s: float = 300.0
    sip_timeout_s: float = 300.0
    max_calls: int = 5000
    end_grace_s: float = 2.0
    flush_s: float = 1.0


@dataclass(slots=True)
class _Call:
    dialog: Dialog
    writer: tape.TapeWriter
    last_media: float
    last_sip: float
    reason: str = ""
    rtp: int = 0
    ssrcs: set[int] = field(default_factory=set)
    sealed: set[tuple[str, int, str]] = field(default_factory=set)  # SDES keys in call.json (party, m=, value)


class LiveTracker:
    """Follows calls in the items of :class:`~callrec.live.frames.FrameDecoder` and writes their tapes.

    ``registry`` marks each open tape (crash recovery); ``on_opened`` / ``on_closed`` / ``on_discarded`` get
    each tape folder (the service's hand-off). ``counts`` and ``closed`` (per reason) are the figures.
    ``keys`` seals SDES keys (default: the service's box for the data folder above ``tapes_dir``).
    """

    def __init__(
        self,
        settings: TrackerSettings,
        *,
        registry: TapeRegistry | None = None,
        on_opened: TapeEvent | None = None,
        on_closed: TapeEvent | None = None,
        on_discarded: TapeEvent | None = None,
        keys: SrtpKeys | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys if keys is not None else SrtpKeys(settings.tapes_dir.parent)
        self.registry = registry
        self.on_opened, self.on_closed, self.on_discarded = on_opened, on_closed, on_discarded
        self.tracker = DialogTracker()
        self.calls: dict[int, _Call] = {}  # id(dialog) -> its open tape
        self.framers: OrderedDict[tuple[bytes, int, bytes, int], StreamFramer] = OrderedDict()
        self.counts = dict.fromkeys(
            ("sip", "rtp", "rtcp", "written", "unmatched", "calls", "calls_refused", "tape_errors"), 0
        )
        self.closed: dict[str, int] = {}
        self._next_flush = self._next_check = 0.0

    # ---- input --------------------------------------------------------------------------------------
    def feed(self, item: Datagram | UdpBlock) -> None:
        """One item of a decoded ring block."""
        if type(item) is UdpBlock:
            route_block(self, item)  # runs of RTP in bulk, the rest datagram by datagram
        else:
            self.datagram(item)  # type: ignore[arg-type]

    def datagram(self, d: Datagram) -> None:
        if d.proto == 6:
            self._tcp(d)
            return
        if d.proto != 17:
            return
        payload = d.payload
        bindings = self.tracker.bindings
        binding = bindings.get((d.dst, d.dport))
        if binding is not None and len(payload) >= 8 and payload[0] >> 6 == 2:
            if len(payload) >= 12 and not 192 <= payload[1] <= 223:
                binding = self._rtp(binding, d, int.from_bytes(payload[8:12], "big"))
            else:
                self.counts["rtcp"] += 1  # RTCP multiplexed on the RTP port (RFC 5761)
            self._write(binding.dialog, d, d.payload)
        elif looks_like_sip(payload):
            self._sip(d, payload)
        else:
            rtcp = bindings.get((d.dst, d.dport - 1))
            if rtcp is not None and len(payload) >= 8 and payload[0] >> 6 == 2:
                self.counts["rtcp"] += 1
                self._write(rtcp.dialog, d, payload)
            else:
                self.counts["unmatched"] += 1

    def _tcp(self, d: Datagram) -> None:
        key = (d.src, d.sport, d.dst, d.dport)
        framer = self.framers.get(key)
        if framer is None:
            if not looks_like_sip(d.payload):
                return
            framer = self.framers[key] = StreamFramer()
            if len(self.framers) > MAX_TCP_STREAMS:
                self.framers.popitem(last=False)
        else:
            self.framers.move_to_end(key)
        for message in framer.feed(d.payload):
            self._sip(d, message)

    def _rtp(self, binding: Binding, d: Datagram, ssrc: int) -> Binding:
        """Count one RTP packet; its first from an SSRC may show its call is another's relayed leg."""
        call = self.calls.get(id(binding.dialog))
        if call is not None and ssrc not in call.ssrcs:
            joined = self.tracker.note_ssrc((d.dst, d.dport), ssrc, d.ts, d.src, self._movable)
            if joined is not None and joined.dialog is not binding.dialog:
                self._joined(call, joined.dialog)
                binding = joined
                call = self.calls.get(id(binding.dialog))
            if call is not None:
                call.ssrcs.add(ssrc)
        if call is not None:
            call.rtp += 1
            call.last_media = d.ts
        self.counts["rtp"] += 1
        return binding

    def _movable(self, dialog: Dialog) -> bool:
        call = self.calls.get(id(dialog))
        return call is None or call.rtp == 0

    def _joined(self, leg: _Call, into: Dialog) -> None:
        """``leg``'s dialog became a leg of ``into`` (relayed media): its tape, with no RTP yet, goes."""
        self.calls.pop(id(leg.dialog), None)
        target = self.calls.get(id(into))
        if target is not None:
            target.ssrcs |= leg.ssrcs
            target.last_sip = max(target.last_sip, leg.last_sip)
        self._drop_tape(leg, discard=True)

    def _sip(self, d: Datagram, message: bytes) -> None:
        self.counts["sip"] += 1
        tracker = self.tracker
        version = tracker.version
        dialog = tracker.feed(d.ts, message)
        if dialog is None:
            return
        call = self.calls.get(id(dialog))
        if call is None:
            call = self._open(dialog, d.ts, message)
            if call is None:
                return
        call.last_sip = d.ts
        if dialog.ended_at is not None and not call.reason:
            method = message[:7].split(b" ", 1)[0]
            call.reason = {b"BYE": "bye", b"CANCEL": "cancel"}.get(method, "rejected" if dialog.failed else "bye")
        if b"rypto:" in message or b"RYPTO:" in message:
            self._seal_keys(call)
            message = redact_crypto(message)
        self._write(dialog, d, message)
        if tracker.version != version:
            try:
                call.writer.update()  # new or moved streams: call.json says so at once
            except OSError as exc:
                self._tape_error(call, exc)

    def _seal_keys(self, call: _Call) -> None:
        """Seal into ``call.json`` the SDES keys of the call not sealed yet (its SIP keeps them as ``*``)."""
        new = [
            (party, section, crypto)
            for (party, section), keys in call.dialog.crypto.items()
            for crypto in keys
            if (party, section, crypto.value()) not in call.sealed
        ]
        if not new:
            return
        call.sealed.update((party, section, crypto.value()) for party, section, crypto in new)
        info = call.writer.info
        if len(info.srtp) + len(new) > MAX_SRTP_KEYS:
            log.error("tape %s: more than %d SRTP keys: the others are not kept", call.writer.folder, MAX_SRTP_KEYS)
            new = new[: max(0, MAX_SRTP_KEYS - len(info.srtp))]
        try:
            info.srtp += seal_sdp_keys(self.keys.box, new)
        except ConfigError as exc:
            log.error("tape %s: the SRTP keys cannot be kept: %s", call.writer.folder, exc)
        # call.json is written with them as the new keys changed the tracker's version

    def _write(self, dialog: Dialog, d: Datagram, payload: bytes) -> None:
        call = self.calls.get(id(dialog))
        if call is None:
            return
        try:
            call.writer.write_packed(d.ts, d.src, d.sport, d.dst, d.dport, payload)
        except OSError as exc:
            self._tape_error(call, exc)
            return
        self.counts["written"] += 1

    # ---- tapes ----------------------------------------------------------------------------------------
    def _open(self, dialog: Dialog, ts: float, message: bytes) -> _Call | None:
        settings = self.settings
        if len(self.calls) >= settings.max_calls:
            self.tracker.forget(dialog)
            self.counts["calls_refused"] += 1
            return None
        info = dialog.info
        info.source = SOURCE
        with contextlib.suppress(ParseError):  # the tracker read it: this does not happen
            info.domain = settings.domain.domain_of(SipMessage.parse(message))
        if self.registry is not None:
            info.recorder = self.registry.owner
        folder = tape.tape_folder(settings.tapes_dir, ts, tape.new_name(info.call_id))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if self.registry is not None:
                self.registry.register(folder)
            # call.json reaches the disk when the tape closes: a burst of INVITEs is not a burst of fsyncs
            # on the thread that must keep up with the ring
            writer = tape.TapeWriter(folder, info, sync_open=False)
        except (OSError, CallrecError) as exc:
            log.error("cannot create tape %s: %s", folder, exc)
            if self.registry is not None:
                self.registry.unregister(folder)
            self.tracker.forget(dialog)
            self.counts["tape_errors"] += 1
            return None
        call = self.calls[id(dialog)] = _Call(dialog, writer, ts, ts)
        self.counts["calls"] += 1
        if self.on_opened is not None:
            self.on_opened(folder)
        return call

    def tick(self, now: float | None = None) -> None:
        """Flush the tapes now and then; close those whose call ended a grace ago or went quiet."""
        now = time.time() if now is None else now
        if now < self._next_check:
            return
        settings = self.settings
        self._next_check = now + CHECK_S
        for call in list(self.calls.values()):
            dialog = call.dialog
            if dialog.ended_at is not None and now - dialog.ended_at > settings.end_grace_s:
                self.close(call, call.reason or "bye")
            elif now - call.last_media > settings.media_timeout_s and now - call.last_sip > settings.sip_timeout_s:
                self.close(call, "idle")
        if now >= self._next_flush:
            self._next_flush = now + settings.flush_s
            for call in list(self.calls.values()):
                try:
                    call.writer.flush()
                except OSError as exc:
                    self._tape_error(call, exc)

    def close_all(self, reason: str = "shutdown") -> None:
        for call in list(self.calls.values()):
            self.close(call, reason)

    def close(self, call: _Call, reason: str) -> None:
        """Close a call's tape and forget the call; a call never answered, with no RTP, leaves no tape."""
        dialog = call.dialog
        self.calls.pop(id(dialog), None)
        self.tracker.forget(dialog)
        for ssrc in call.ssrcs:
            seen = self.tracker.ssrcs.get(ssrc)
            if seen is not None and seen[0] is dialog:
                del self.tracker.ssrcs[ssrc]
        self.closed[reason] = self.closed.get(reason, 0) + 1
        call.writer.info.end_reason = reason
        self._drop_tape(call, discard=call.rtp == 0 and not dialog.answered)

    def _drop_tape(self, call: _Call, *, discard: bool) -> None:
        writer, folder = call.writer, call.writer.folder
        info = writer.info
        try:
            writer.close(
                ended_at=info.ended_at or call.dialog.ended_at or max(call.last_media, call.last_sip),
                durable=not discard,
            )
        except (OSError, CallrecError) as exc:
            # the marker stays: the next start closes the tape as interrupted, nothing is lost
            log.error("tape %s: cannot close it: %s", folder, exc)
            self.counts["tape_errors"] += 1
            return
        if discard:
            shutil.rmtree(folder, ignore_errors=True)
        if self.registry is not None:
            self.registry.unregister(folder)
        notify = self.on_discarded if discard else self.on_closed
        if notify is not None:
            notify(folder)

    def _tape_error(self, call: _Call, exc: OSError) -> None:
        self.counts["tape_errors"] += 1
        log.error("tape %s: %s", call.writer.folder, exc.strerror or exc)
