"""Finding calls in signalling: SIP dialogs by Call-ID, and where each party receives its media.

The SDP a party sends says where *it* receives media, so RTP sent to that address comes from the other
party. The caller is the party that sent the initial INVITE (party ``A``), the callee is ``B``.

A proxy's two legs of one call are one call: with the same Call-ID they are one dialog already; a proxy that
masks the Call-ID on one side (Kamailio's topoh) forwards the INVITE with a new Call-ID but the same From (URI
and tag) and a lower Max-Forwards, while the first leg is still unanswered: that INVITE joins the first leg's
call (its Call-ID added to ``call_ids``), so both legs' streams are one call's and the relayed packets (same
SSRCs) are merged as duplicates by the mixer, as for a proxy that keeps the Call-ID. Where signalling does
not tell (a proxy that also resets Max-Forwards, a B2BUA relaying media as it is), media does: RTP relayed
from one call into another (its SSRC the same party's in another live call, first seen there within
``SHARED_SSRC_S``, sent then to the host this copy now comes from) makes its call join that one
(``note_ssrc``), as long as nothing of it was mixed yet.

SRTP keyed by SDES (RFC 4568): each party's ``a=crypto`` is the key *it* sends with, so the offerer's line
decrypts what the offerer sends and the answerer's what the answerer sends; a dialog keeps them by sending
party and ``m=`` line (``Dialog.crypto``), and a binding says whether its stream is SRTP and which line's
keys decrypt it (``Binding.sdes_keys``). A capture tape's SIP holds its keys replaced by ``*``: the keys
sealed in its ``call.json`` for that party, line and tag (``DialogTracker.sealed``) are taken in their place;
none there, none taken (the stream's key is missing).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from callrec.errors import ParseError
from callrec.models import CallInfo, Party, Stream
from callrec.wire.sdp import Sdp
from callrec.wire.sip import SipMessage, display_name, uri_user

if TYPE_CHECKING:  # the SDES parser loads with the first a=crypto: a plain-RTP call never needs it
    from callrec.wire.sdes import CryptoAttribute

Endpoint = tuple[bytes, int]
# how long after a call's INVITE the same INVITE may come forwarded under another Call-ID (timer B, 64*T1)
FORWARD_WINDOW_S = 32.0
# a relayed packet crosses the capture point again within milliseconds; an SSRC two calls share only farther
# apart than this (a device with a fixed SSRC) does not join them
SHARED_SSRC_S = 2.0


@dataclass(slots=True)
class Dialog:
    """One call being tracked."""

    info: CallInfo
    caller_tag: str | None
    endpoints: set[Endpoint] = field(default_factory=set)
    answered: bool = False
    failed: bool = False
    ended_at: float | None = None
    # what the initial INVITE said, to recognise the same INVITE forwarded with a masked Call-ID
    from_uri: str = ""
    max_forwards: int | None = None
    # SDES keys: (sending party, m= line index; a tape's: stream index) -> its a=crypto attributes, oldest first
    crypto: dict[tuple[str, int], list[CryptoAttribute]] = field(default_factory=dict)


@dataclass(slots=True)
class Binding:
    """RTP sent to an endpoint belongs to ``dialog`` and comes from ``stream.party``."""

    dialog: Dialog
    stream: Stream
    # the receiver's m= line (a tape's: the stream's index) and whether it is SRTP (RTP/SAVP, RTP/SAVPF...)
    section: int = -1
    srtp: bool = False

    def sdes_keys(self) -> list[CryptoAttribute]:
        """The SDES keys its sender may use on this stream, oldest first (none known: empty)."""
        return self.dialog.crypto.get((self.stream.party, self.section), [])


class DialogTracker:
    """Follows SIP messages in capture order and keeps the endpoint → (call, party) map current."""

    def __init__(self) -> None:
        self.dialogs: dict[str, Dialog] = {}
        # the other Call-IDs of a call's legs (a proxy that masks the Call-ID): Call-ID -> the call's dialog
        self.legs: dict[str, Dialog] = {}
        # each RTP SSRC seen: the call and party it came in first, when, and the host it was sent to
        self.ssrcs: dict[int, tuple[Dialog, str, float, bytes]] = {}
        self.bindings: dict[Endpoint, Binding] = {}
        self.malformed = 0
        self.sdp_errors = 0
        self.version = 0  # bumped whenever an endpoint or its codecs change
        # a capture tape's sealed SDES keys, opened: (sending party, m= line, tag) -> its a=crypto attributes;
        # they stand in for the keys the tape's SIP holds replaced (wire/sdes_redact.py)
        self.sealed: Mapping[tuple[str, int, int], Sequence[CryptoAttribute]] = {}

    def feed(self, ts: float, data: bytes) -> Dialog | None:
        """Take one SIP message as captured; return the dialog it belongs to (None if none)."""
        try:
            msg = SipMessage.parse(data)
            _, cseq_method = msg.cseq
        except ParseError:
            self.malformed += 1
            return None
        call_id = msg.call_id
        if not call_id:
            self.malformed += 1
            return None
        dialog = self.dialogs.get(call_id) or self.legs.get(call_id)
        if msg.method == "INVITE" and dialog is None and msg.to_tag is None:
            dialog = self._forwarded(ts, msg) or self._new_dialog(ts, msg)
        if dialog is None:
            return None
        if dialog.caller_tag is None and msg.method == "INVITE" and msg.to_tag is None:
            dialog.caller_tag = msg.from_tag  # a tape's call (add_call) whose signalling it holds: its caller
        info = dialog.info
        # who sent this: a request from the caller carries the caller's From tag, and so does its response
        from_caller = dialog.caller_tag is None or msg.from_tag == dialog.caller_tag
        sender_is_caller = from_caller if msg.is_request else not from_caller
        if msg.method in ("INVITE", "UPDATE", "ACK", "PRACK") or (
            msg.status is not None and cseq_method in ("INVITE", "UPDATE", "PRACK") and msg.status < 300
        ):
            self._take_sdp(dialog, msg, sender_is_caller)
        if msg.status is not None and cseq_method == "INVITE":
            if 200 <= msg.status < 300:
                dialog.answered = True
                callee = info.party("B")
                if callee is not None and not callee.name:
                    callee.name = display_name(msg.header("to"))
            elif msg.status >= 300 and not dialog.answered:
                dialog.failed = True
                dialog.ended_at = ts
        if msg.method == "BYE" or msg.method == "CANCEL":
            dialog.ended_at = ts
            info.ended_at = ts
            info.closed_cleanly = True
        return dialog

    def _new_dialog(self, ts: float, msg: SipMessage) -> Dialog:
        from_value, to_value = msg.header("from"), msg.header("to")
        info = CallInfo(
            call_ids=[msg.call_id],
            parties=[
                Party("A", "caller", uri_user(from_value), display_name(from_value), _uri(from_value)),
                Party("B", "callee", uri_user(to_value), display_name(to_value), _uri(to_value)),
            ],
            started_at=ts,
            source="pcap",
        )
        dialog = Dialog(info=info, caller_tag=msg.from_tag, from_uri=_uri(from_value),
                        max_forwards=_max_forwards(msg))  # fmt: skip
        self.dialogs[msg.call_id] = dialog
        return dialog

    def _forwarded(self, ts: float, msg: SipMessage) -> Dialog | None:
        """The call whose INVITE this one is, forwarded by a proxy under another Call-ID: the same From URI and
        tag, a lower Max-Forwards, while that call is still unanswered (and not older than a transaction
        lives); None when there is none. The Call-ID becomes one of the call's."""
        hops = _max_forwards(msg)
        if hops is None or msg.from_tag is None:
            return None
        uri = _uri(msg.header("from"))
        for dialog in self.dialogs.values():
            if (
                dialog.caller_tag == msg.from_tag
                and dialog.from_uri == uri
                and dialog.max_forwards is not None
                and hops < dialog.max_forwards
                and not (dialog.answered or dialog.failed or dialog.ended_at is not None)
                and 0 <= ts - (dialog.info.started_at or ts) <= FORWARD_WINDOW_S
            ):
                dialog.info.call_ids.append(msg.call_id)
                self.legs[msg.call_id] = dialog
                return dialog
        return None

    def _take_sdp(self, dialog: Dialog, msg: SipMessage, sender_is_caller: bool) -> None:
        body = msg.sdp_body()
        if not body:
            return
        try:
            sdp = Sdp.parse(body)
        except ParseError:
            self.sdp_errors += 1
            return
        # media sent to the SDP's sender comes from the other party
        party = "B" if sender_is_caller else "A"
        if b"a=crypto:" in body:
            self._take_crypto(dialog, "A" if sender_is_caller else "B", body)
        for section, media in enumerate(sdp.media):
            if media.media != "audio" or media.port == 0 or not media.address:
                continue
            try:
                addr = _pack(media.address)
            except OSError:
                continue
            if addr in (bytes(4), bytes(16)):
                continue  # 0.0.0.0: hold in RFC 2543 style, nothing will be received there
            endpoint = (addr, media.port)
            stream = next(
                (
                    s
                    for s in dialog.info.streams
                    if (s.local_addr, s.local_port) == (media.address, media.port)
                ),
                None,
            )
            if stream is None:
                stream = Stream(party=party, local_addr=media.address, local_port=media.port)
                dialog.info.streams.append(stream)
            stream.party = party
            stream.rtpmap.update(media.rtpmap)
            for pt in media.formats:
                codec = media.codec(pt)
                if codec is not None and pt not in stream.rtpmap:
                    stream.rtpmap[pt] = codec
            dialog.endpoints.add(endpoint)
            srtp = "SAVP" in media.proto.upper()  # SDES or DTLS-SRTP (UDP/TLS/RTP/SAVP): never plain RTP
            self.bindings[endpoint] = Binding(dialog, stream, section, srtp)

    def _take_crypto(self, dialog: Dialog, sender: str, body: bytes) -> None:
        """Keep the SDES keys ``sender`` announces (each m= line's a=crypto: what it will send with)."""
        from callrec.wire.sdes import crypto_by_media
        from callrec.wire.sdes_redact import redacted_tags

        hidden = redacted_tags(body) if b":*" in body else []
        for section, media in enumerate(crypto_by_media(body)):
            offers = list(media.offers)
            if section < len(hidden):
                offers += [k for tag in hidden[section] for k in self.sealed.get((sender, section, tag), ())]
            if not media.is_srtp or not offers:
                continue
            known = dialog.crypto.setdefault((sender, section), [])
            for offer in offers:
                if all(offer.value() != k.value() for k in known):
                    known.append(offer)
                    self.version += 1  # a new key: routes are made again and take it

    def note_ssrc(
        self,
        endpoint: Endpoint,
        ssrc: int,
        ts: float,
        source: bytes,
        movable: Callable[[Dialog], bool] | None = None,
    ) -> Binding | None:
        """The binding of RTP with ``ssrc`` sent from ``source`` to ``endpoint`` (None: nobody signalled it): the
        endpoint's own, unless it is relayed from another live call: the same party's SSRC there, seen first
        less than ``SHARED_SSRC_S`` before, sent to the host this copy comes from. Then the endpoint's call (if
        ``movable`` lets it go) joins that call first."""
        binding = self.bindings.get(endpoint)
        if binding is None:
            return None
        seen = self.ssrcs.get(ssrc)
        if seen is None or self.dialogs.get(seen[0].info.call_id) is not seen[0]:
            self.ssrcs[ssrc] = (binding.dialog, binding.stream.party, ts, endpoint[0])
            return binding
        owner, party, first, relay = seen
        if (
            owner is binding.dialog
            or party != binding.stream.party
            or source != relay
            or abs(ts - first) > SHARED_SSRC_S
            or (movable is not None and not movable(binding.dialog))
        ):
            return binding
        self.merge(owner, binding.dialog)
        return self.bindings.get(endpoint)

    def merge(self, into: Dialog, other: Dialog) -> None:
        """Make ``other`` a leg of ``into``: its Call-IDs, streams and endpoints become the call's."""
        info = into.info
        for call_id in other.info.call_ids:
            if call_id not in info.call_ids:
                info.call_ids.append(call_id)
            self.legs[call_id] = into
        self.legs.pop(info.call_id, None)
        self.dialogs.pop(other.info.call_id, None)
        info.streams += [s for s in other.info.streams if s not in info.streams]
        for endpoint in other.endpoints:
            binding = self.bindings.get(endpoint)
            if binding is not None and binding.dialog is other:
                self.bindings[endpoint] = Binding(into, binding.stream, binding.section, binding.srtp)
            into.endpoints.add(endpoint)
        for where, keys in other.crypto.items():
            known = into.crypto.setdefault(where, [])
            known += [k for k in keys if all(k.value() != o.value() for o in known)]
        for ssrc, (owner, party, first, relay) in list(self.ssrcs.items()):
            if owner is other:
                self.ssrcs[ssrc] = (into, party, first, relay)
        into.answered = into.answered or other.answered
        if other.info.started_at is not None and (info.started_at is None or other.info.started_at < info.started_at):
            info.started_at = other.info.started_at
        self.version += 1

    def add_call(self, info: CallInfo, keys: Mapping[int, Sequence[CryptoAttribute]] | None = None) -> Dialog:
        """Track a call whose streams are already known (a tape): no signalling needed. ``keys``: the SRTP
        keys of its SRTP streams, by stream index (those streams are SRTP, every other one plain RTP)."""
        dialog = Dialog(info=info, caller_tag=None, answered=True)
        keys = keys or {}
        self.dialogs[info.call_id] = dialog
        for call_id in info.call_ids[1:]:  # the signalling of its other legs, if the tape holds it
            self.legs[call_id] = dialog
        for index, stream in enumerate(info.streams):
            try:
                endpoint = (_pack(stream.local_addr), stream.local_port)
            except OSError:
                continue
            dialog.endpoints.add(endpoint)
            if index in keys:
                dialog.crypto[(stream.party, index)] = list(keys[index])
            self.bindings[endpoint] = Binding(dialog, stream, index, index in keys)
        return dialog

    def forget(self, dialog: Dialog) -> None:
        """Drop a finished dialog and the endpoints still pointing at it."""
        for endpoint in dialog.endpoints:
            binding = self.bindings.get(endpoint)
            if binding is not None and binding.dialog is dialog:
                del self.bindings[endpoint]
                self.version += 1
        self.dialogs.pop(dialog.info.call_id, None)
        for call_id in dialog.info.call_ids[1:]:
            if self.legs.get(call_id) is dialog:
                del self.legs[call_id]


def _max_forwards(msg: SipMessage) -> int | None:
    value = (msg.header("max-forwards") or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 3 else None


def _pack(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


def _uri(value: str | None) -> str:
    if not value:
        return ""
    if "<" in value and ">" in value:
        return value.split("<", 1)[1].split(">", 1)[0]
    return value.split(";")[0].strip()


def looks_like_sip(payload: bytes) -> bool:
    """A cheap test before parsing: SIP starts with a method name or ``SIP/2.0``."""
    head = payload[:8]
    return head.startswith(b"SIP/2.0 ") or (
        head[:1].isalpha() and head.split(b" ", 1)[0].isupper() and b" SIP/2.0" in payload[:512]
    )
