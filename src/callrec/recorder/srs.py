"""The SRS's SIP dialogs: what each request of an SRC does to the recording sessions.

An INVITE is checked (extensions, trust, limits, SDP) and becomes a ``RecordingSession`` with one RTP/RTCP
port pair per recordable ``m=`` line; its 200 OK goes out once the tape exists. A re-INVITE or UPDATE
changes streams, codecs, hold and metadata; BYE, CANCEL and a missing ACK end the session.
"""

from __future__ import annotations

import asyncio
import logging
import time

from callrec.config import RecorderConfig
from callrec.errors import CallrecError, ParseError
from callrec.files import tape
from callrec.models import CallInfo
from callrec.recorder.listener import Origin
from callrec.recorder.ports import PortsExhausted
from callrec.recorder.recstats import RecorderStats
from callrec.recorder.session import (
    RecordingSession,
    asked_domain,
    label_call,
    parties_from,
    recordable,
    refresh_parties,
    session_for,
)
from callrec.recorder.sipout import ALLOWED_METHODS, SipOut
from callrec.recorder.sipuri import new_tag, target_uri
from callrec.recorder.table import SessionTable, SourceShareTaken, source_key
from callrec.wire.sdes import crypto_by_media
from callrec.wire.sdp import Sdp
from callrec.wire.sip import SipMessage
from callrec.wire.siprec import RecordingMetadata
from callrec.wire.sipvalidate import validate_request

log = logging.getLogger("callrec.recorder")

SUPPORTED_OPTIONS = frozenset({"siprec"})
METADATA_TYPE = "application/rs-metadata+xml"
RETRY_AFTER_S = 30
TRYING_AFTER_S = 0.1


class SrsDialogs:
    """Handles each SIP request of an SRC against the session ``table``, answering through ``sip``."""

    def __init__(self, cfg: RecorderConfig, stats: RecorderStats, table: SessionTable, sip: SipOut) -> None:
        self.cfg = cfg
        self.stats = stats
        self.table = table
        self.streams = table.streams
        self.sip = sip
        self._respond = sip.respond

    def dispatch(self, data: bytes, origin: Origin) -> None:
        try:
            msg = SipMessage.parse(data)
            if msg.is_request:
                validate_request(msg)
        except ParseError as exc:
            self.sip.bad_request(data, origin, exc)
            return
        if not msg.is_request:
            return  # answers to our BYEs: nothing to do with them
        transactions = self.sip.transactions
        assert transactions is not None
        if msg.method != "ACK" and not self.cfg.allowed(origin.remote[0]):
            self.sip.reply_stateless(msg, origin, 403, "Forbidden: address not allowed to record")
            return
        if transactions.received(msg, origin.send, origin.reliable):
            return
        method = msg.method
        try:
            if method == "INVITE":
                self._invite(msg, origin)
            elif method == "ACK":
                self._ack(msg)
            elif method == "BYE":
                self._bye(msg, origin)
            elif method == "CANCEL":
                self._cancel(msg, origin)
            elif method == "OPTIONS":
                self._options(msg, origin)
            elif method == "UPDATE":
                self._reinvite(msg, origin)
            elif method == "INFO":
                self._in_dialog_ok(msg, origin)
            else:
                self._respond(msg, origin, 405, "Method Not Allowed", headers=[("allow", ALLOWED_METHODS)])
        except CallrecError as exc:
            log.warning("%s %s failed: %s", method, msg.call_id, exc)
            self._respond(msg, origin, 500, f"Server Internal Error: {exc}")

    def _options(self, msg: SipMessage, origin: Origin) -> None:
        self._respond(
            msg,
            origin,
            200,
            "OK",
            to_tag=new_tag() if msg.to_tag is None else None,
            headers=[
                ("allow", ALLOWED_METHODS),
                ("accept", f"application/sdp, {METADATA_TYPE}, multipart/mixed"),
                ("supported", "siprec"),
            ],
        )

    def _invite(self, msg: SipMessage, origin: Origin) -> None:
        if msg.to_tag is not None:
            self._reinvite(msg, origin)
            return
        unsupported = _unsupported(msg)
        if unsupported:
            self._respond(msg, origin, 420, "Bad Extension", headers=[("unsupported", ", ".join(unsupported))])
            return
        if msg.call_id in self.table.sessions:
            self._respond(msg, origin, 482, "Loop Detected: Call-ID already in a session", to_tag=new_tag())
            return
        metadata = _metadata(msg)
        source = source_key(origin.remote[0])
        asked = asked_domain(msg, metadata, self.cfg)
        domain = self.cfg.domain_for(origin.remote[0], asked)
        if domain is None:
            self.stats.sessions_rejected += 1
            log.warning(
                "INVITE %s from %s refused: not allowed to record into domain %r",
                msg.call_id, source, asked or "(none named)",
            )  # fmt: skip
            reason = (
                "Forbidden: source not allowed for this domain"
                if asked
                else "Forbidden: source serves several domains and the INVITE names none"
            )
            self._respond(msg, origin, 403, reason, to_tag=new_tag())
            return
        refusal = self.table.refusal() or self.table.source_refusal(source)
        if refusal is not None:
            self.stats.sessions_rejected += 1
            self._respond(msg, origin, 503, refusal, to_tag=new_tag(), headers=[("retry-after", str(RETRY_AFTER_S))])
            return
        sdp_body = msg.sdp_body()
        if not sdp_body:
            self._respond(msg, origin, 488, "Not Acceptable Here: the INVITE has no SDP offer", to_tag=new_tag())
            return
        try:
            sdp = Sdp.parse(sdp_body)
        except ParseError as exc:
            self._respond(msg, origin, 400, f"Bad Request: {exc}", to_tag=new_tag())
            return
        if not any(recordable(m) for m in sdp.media):
            self._respond(msg, origin, 488, "Not Acceptable Here: no recordable RTP/AVP audio stream", to_tag=new_tag())
            return
        session = self._new_session(msg, origin, metadata, source, domain)
        try:
            self.streams.apply_offer(session, sdp, self.sip.advertised(origin), crypto_by_media(sdp_body))
        except PortsExhausted as exc:
            self.streams.release(session)
            self.stats.sessions_rejected += 1
            self._respond(
                msg,
                origin,
                503,
                "Service Unavailable: this source holds its share of the RTP ports"
                if isinstance(exc, SourceShareTaken)
                else "Service Unavailable: no free RTP ports",
                to_tag=session.local_tag,
                headers=[("retry-after", str(RETRY_AFTER_S))],
            )
            return
        if not session.ports():
            # every audio stream is SRTP without an a=crypto we can decrypt (each logged with its reason)
            self.streams.release(session)
            reason = next((line.refused for line in session.lines if line.refused), "")
            self._respond(msg, origin, 488, f"Not Acceptable Here: {reason}", to_tag=session.local_tag)
            return
        self.table.add(session)
        loop = asyncio.get_running_loop()
        # 100 Trying only when the answer is slow (RFC 3261 section 17.2.1: not needed within 200 ms)
        loop.call_later(TRYING_AFTER_S, self._trying, msg, origin)
        task = loop.create_task(self._open(session, msg, origin))
        self.table.pending.add(task)
        task.add_done_callback(self.table.pending.discard)

    def _new_session(
        self, msg: SipMessage, origin: Origin, metadata: RecordingMetadata | None, source: str, domain: str
    ) -> RecordingSession:
        """The session an accepted INVITE opens (its tape folder named, not created yet)."""
        now = time.time()
        call_id = msg.call_id
        info = CallInfo(call_ids=[call_id], source="siprec", started_at=now)
        info.recorder = self.table.registry.owner if self.table.registry is not None else ""
        session = session_for(msg, info, tape.tape_folder(self.cfg.tapes_dir, now, tape.new_name(call_id)), metadata)
        session.origin = origin
        session.advertised = self.sip.advertised(origin)
        session.source = source
        info.parties = parties_from(msg, metadata, self.cfg)
        label_call(session, msg, domain, self.cfg)
        return session

    def _trying(self, msg: SipMessage, origin: Origin) -> None:
        if self.sip.transactions is not None and not self.sip.transactions.has_final(msg):
            self._respond(msg, origin, 100, "Trying")

    async def _open(self, session: RecordingSession, msg: SipMessage, origin: Origin) -> None:
        """Create the tape off the event loop, start reading media, then answer 200 OK."""
        if not await self.table.create_tape(session):
            if not session.cancelled:
                self._respond(
                    msg, origin, 500, "Server Internal Error: cannot create the tape", to_tag=session.local_tag
                )
            return
        if session.cancelled:
            self.table.close(session, "cancel", discard=True)
            return
        self.streams.start(session, self.sip.advertised(origin))
        self.sip.accept(msg, origin, session)
        log.info("recording %s into %s", session.call_id, session.folder)

    def _reinvite(self, msg: SipMessage, origin: Origin) -> None:
        """A re-INVITE or UPDATE: new streams, codecs, hold/resume (SDP) and metadata updates."""
        session = self._dialog(msg, origin)
        if session is None:
            return
        if msg.header("contact"):  # a target refresh (RFC 3261 section 12.2.2): our BYE goes there now
            session.remote_target = target_uri(msg.header("contact") or "")
        if session.tape is None:
            # only a guessed To tag gets here: the tag is learnt from the 200 OK sent once the tape exists
            self._respond(
                msg,
                origin,
                500,
                "Server Internal Error: the session is still being set up",
                headers=[("retry-after", "1")],
            )
            return
        body = msg.sdp_body()
        sdp: Sdp | None = None
        if body:
            try:
                sdp = Sdp.parse(body)
            except ParseError as exc:
                self._respond(msg, origin, 400, f"Bad Request: {exc}")
                return
            if len(sdp.media) < len(session.lines):
                # m= lines are never taken away, only disabled with port 0 (RFC 3264 section 8)
                self._respond(msg, origin, 488, "Not Acceptable Here: the offer has fewer m= lines than the session")
                return
        update = _metadata(msg)
        if update is not None:
            if session.metadata is None:
                session.metadata = update
            else:
                session.metadata.update(update)
            refresh_parties(session, self.cfg)
            session.info.original_call_ids = list(session.metadata.call_ids)
        if sdp is not None:
            try:
                self.streams.apply_offer(session, sdp, self.sip.advertised(origin), crypto_by_media(body or b""))
            except PortsExhausted:
                self._respond(
                    msg,
                    origin,
                    500,
                    "Server Internal Error: no free RTP ports",
                    headers=[("retry-after", str(RETRY_AFTER_S))],
                )
                return
            self.streams.start(session, self.sip.advertised(origin))
        if sdp is not None or update is not None:
            self.table.save_info(session)
        # an UPDATE without an offer gets no answer; a re-INVITE without one gets our offer
        answer = session.answer if sdp is not None or msg.method == "INVITE" else b""
        self._respond(
            msg,
            origin,
            200,
            "OK",
            headers=[("contact", self.sip.contact(origin))],
            body=answer,
            content_type="application/sdp",
        )

    def _in_dialog_ok(self, msg: SipMessage, origin: Origin) -> None:
        if self._dialog(msg, origin) is not None:
            self._respond(msg, origin, 200, "OK")

    def _dialog(self, msg: SipMessage, origin: Origin) -> RecordingSession | None:
        """The session an in-dialog request belongs to, answering 481/500 itself when there is none."""
        session = self.table.sessions.get(msg.call_id)
        if session is None or session.closed or msg.to_tag != session.local_tag:
            self._respond(msg, origin, 481, "Call/Transaction Does Not Exist")
            return None
        number = msg.cseq[0]
        if number <= session.last_invite_cseq and msg.method != "ACK":
            self._respond(msg, origin, 500, "Server Internal Error: CSeq out of order")
            return None
        session.last_invite_cseq = number
        session.touch()
        return session

    def _ack(self, msg: SipMessage) -> None:
        session = self.table.sessions.get(msg.call_id)
        if session is not None and msg.to_tag == session.local_tag:
            session.confirmed = True
            session.touch()

    def _bye(self, msg: SipMessage, origin: Origin) -> None:
        session = self._dialog(msg, origin)
        if session is None:
            return
        self._respond(msg, origin, 200, "OK")
        self.table.close(session, "bye")

    def _cancel(self, msg: SipMessage, origin: Origin) -> None:
        transactions = self.sip.transactions
        assert transactions is not None
        invite = transactions.invite_for_cancel(msg)
        if invite is None:
            self._respond(msg, origin, 481, "Call/Transaction Does Not Exist")
            return
        session = self.table.sessions.get(invite.call_id)
        tag = session.local_tag if session is not None else new_tag()
        # the same To tag as the INVITE's response (RFC 3261 section 9.2)
        self._respond(msg, origin, 200, "OK", to_tag=tag)
        if transactions.has_final(invite):
            return  # answered already: the CANCEL changes nothing
        self._respond(invite, origin, 487, "Request Terminated", to_tag=tag)
        if session is not None:
            session.cancelled = True
            if session.tape is not None:
                self.table.close(session, "cancel", discard=True)

    def ack_timeout(self, invite: SipMessage) -> None:
        session = self.table.sessions.get(invite.call_id)
        if session is not None and not session.confirmed and not session.closed:
            log.warning("no ACK for the 200 OK of %s: closing the session", invite.call_id)
            # the dialog counts as confirmed now, and its session is ended with a BYE (RFC 3261 13.3.1.4)
            session.confirmed = True
            self.sip.send_bye(session)
            self.table.close(session, "no-ack")


def _unsupported(msg: SipMessage) -> list[str]:
    required = [t.strip() for v in msg.header_all("require") for t in v.split(",") if t.strip()]
    return [t for t in required if t.lower() not in SUPPORTED_OPTIONS]


def _metadata(msg: SipMessage) -> RecordingMetadata | None:
    """The rs-metadata of a request; broken metadata is logged and ignored (the media still matters)."""
    body = msg.body_part(METADATA_TYPE)
    if not body:
        return None
    try:
        metadata = RecordingMetadata.parse(body)
    except ParseError as exc:
        log.warning("call %s: ignoring its recording metadata (parties by offer order): %s", msg.call_id, exc)
        return None
    if metadata.repairs:
        log.warning(
            "call %s: its recording metadata is not well-formed XML, read after repairing %s",
            msg.call_id, ", ".join(metadata.repairs),
        )  # fmt: skip
    return metadata
