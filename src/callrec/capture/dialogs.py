"""Finding calls in signalling: SIP dialogs by Call-ID, and where each party receives its media.

The SDP a party sends says where *it* receives media, so RTP sent to that address comes from the other
party. The caller is the party that sent the initial INVITE (party ``A``), the callee is ``B``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from callrec.capture.sdp import Sdp
from callrec.capture.sip import SipMessage, display_name, uri_user
from callrec.errors import ParseError
from callrec.models import CallInfo, Party, Stream

Endpoint = tuple[bytes, int]


@dataclass(slots=True)
class Dialog:
    """One call being tracked."""

    info: CallInfo
    caller_tag: str | None
    endpoints: set[Endpoint] = field(default_factory=set)
    answered: bool = False
    failed: bool = False
    ended_at: float | None = None


@dataclass(slots=True)
class Binding:
    """RTP sent to an endpoint belongs to ``dialog`` and comes from ``stream.party``."""

    dialog: Dialog
    stream: Stream


class DialogTracker:
    """Follows SIP messages in capture order and keeps the endpoint → (call, party) map current."""

    def __init__(self) -> None:
        self.dialogs: dict[str, Dialog] = {}
        self.bindings: dict[Endpoint, Binding] = {}
        self.malformed = 0
        self.sdp_errors = 0
        self.version = 0  # bumped whenever an endpoint or its codecs change

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
        dialog = self.dialogs.get(call_id)
        if msg.method == "INVITE" and dialog is None and msg.to_tag is None:
            dialog = self._new_dialog(ts, msg)
        if dialog is None:
            return None
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
        dialog = Dialog(info=info, caller_tag=msg.from_tag)
        self.dialogs[msg.call_id] = dialog
        return dialog

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
        for media in sdp.media:
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
            self.bindings[endpoint] = Binding(dialog, stream)

    def add_call(self, info: CallInfo) -> Dialog:
        """Track a call whose streams are already known (a tape): no signalling needed."""
        dialog = Dialog(info=info, caller_tag=None, answered=True)
        self.dialogs[info.call_id] = dialog
        for stream in info.streams:
            try:
                endpoint = (_pack(stream.local_addr), stream.local_port)
            except OSError:
                continue
            dialog.endpoints.add(endpoint)
            self.bindings[endpoint] = Binding(dialog, stream)
        return dialog

    def forget(self, dialog: Dialog) -> None:
        """Drop a finished dialog and the endpoints still pointing at it."""
        for endpoint in dialog.endpoints:
            binding = self.bindings.get(endpoint)
            if binding is not None and binding.dialog is dialog:
                del self.bindings[endpoint]
                self.version += 1
        self.dialogs.pop(dialog.info.call_id, None)


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
