"""The SIPREC session recording server: SIP dialogs in, one tape per recording session out.

Signalling runs through ``SipListener`` (UDP and TCP) and ``ServerTransactions``; each accepted INVITE
becomes a ``RecordingSession`` with one RTP/RTCP port pair per recordable ``m=`` line, whose packets
``MediaReceiver`` appends to the session's tape as they arrive. Disk work that may block (creating a
tape, rewriting ``call.json``, closing) runs in a small thread pool so that media is never held up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from callrec.config import RecorderConfig, source_ip
from callrec.errors import CallrecError, ParseError
from callrec.files import tape
from callrec.models import CallInfo, Party, Stream
from callrec.recorder import recstats
from callrec.recorder.listener import Origin, SipListener
from callrec.recorder.media_io import MediaReceiver
from callrec.recorder.ports import PORT_REST_S, PortAllocator, PortsExhausted
from callrec.recorder.recovery import TapeRegistry
from callrec.recorder.session import (
    MediaLine,
    RecordingSession,
    build_answer,
    is_siprec,
    parties_from,
    party_of,
    recordable,
    refresh_parties,
)
from callrec.recorder.transactions import T1_S, T2_S, ServerTransactions
from callrec.wire.sdp import Sdp
from callrec.wire.sip import SipMessage, make_response
from callrec.wire.siprec import RecordingMetadata
from callrec.wire.sipvalidate import salvage_request, validate_request

log = logging.getLogger("callrec.recorder")

ALLOWED_METHODS = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"
SUPPORTED_OPTIONS = frozenset({"siprec"})
METADATA_TYPE = "application/rs-metadata+xml"
HOUSEKEEPING_S = 1.0
DISK_CHECK_S = 2.0
RETRY_AFTER_S = 30
TRYING_AFTER_S = 0.1
STOP_WAIT_S = 5.0
BYE_CONNECT_S = 2.0  # a BYE that needs a TCP connection of its own gives up after this


class SourceShareTaken(PortsExhausted):
    """The SRC already holds its share of the RTP port pairs (twice its session limit)."""


@dataclass(slots=True)
class RecorderStats:
    sessions_total: int = 0
    sessions_rejected: int = 0
    sip_bad: int = 0
    sip_dropped: int = 0
    sip_errors: int = 0  # messages whose handling failed unexpectedly (a bug): see the log
    tapes_recovered: int = 0
    closed: dict[str, int] = field(default_factory=dict)


class Recorder:
    """``callrec record``: accepts SIPREC sessions and writes their tapes under ``cfg.tapes_dir``."""

    def __init__(
        self,
        cfg: RecorderConfig,
        on_tape_closed: Callable[[Path], object] | None = None,
        *,
        on_tape_opened: Callable[[Path], object] | None = None,
        on_tape_discarded: Callable[[Path], object] | None = None,
        t1: float = T1_S,
        port_rest_s: float = PORT_REST_S,
    ) -> None:
        """``t1`` is SIP's round-trip estimate (RFC 3261 timer T1); retransmissions and timeouts scale with it.
        ``port_rest_s``: how long a closed session's RTP port pair rests before reuse (see ``PortAllocator``)."""
        self.cfg = cfg
        self._t1 = t1
        self.stats = RecorderStats()
        self.sessions: dict[str, RecordingSession] = {}
        self._on_tape_closed = on_tape_closed
        # the service's hand-off: a call appears (state "recording") as soon as its tape exists
        self._on_tape_opened = on_tape_opened
        self._on_tape_discarded = on_tape_discarded
        self._ports = PortAllocator(cfg.rtp_first, cfg.rtp_last, rest_s=port_rest_s)
        self._disk = ThreadPoolExecutor(max_workers=4, thread_name_prefix="callrec-disk")
        # call.json rewrites and tape closes, one at a time in the order asked: a later call.json never
        # loses to an earlier one, and the closing one comes last
        self._meta = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callrec-meta")
        self._listener = SipListener(self._handle)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._media: MediaReceiver | None = None
        self._transactions: ServerTransactions | None = None
        self._registry: TapeRegistry | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._byes: set[asyncio.Task[None]] = set()  # BYEs sent on TCP connections of their own
        self._closing: set[asyncio.Future[None]] = set()  # tapes being closed on the meta thread
        self._disk_ok = True
        self._stopping = False
        self._disk_checked = 0.0
        self._local_ip: dict[str, str] = {}
        # the Call-IDs of the sessions each SRC address holds (the per-source limit)
        self._by_source: dict[str, set[str]] = {}
        self._published: dict[str, int] = {}
        self.address: tuple[str, int] = ("", 0)

    # ---- life cycle -------------------------------------------------------------------------------
    async def start(self) -> list[Path]:
        """Recover tapes left open by a dead recorder, then listen; returns the recovered tapes."""
        loop = self._loop = asyncio.get_running_loop()
        self.cfg.tapes_dir.mkdir(parents=True, exist_ok=True)
        self._registry = TapeRegistry(self.cfg.tapes_dir)
        recovered = await loop.run_in_executor(self._disk, self._registry.recover)
        self.stats.tapes_recovered = len(recovered)
        for folder in recovered:
            log.warning("tape %s was left open by a recorder that died: closed and marked interrupted", folder)
            if self._on_tape_closed is not None:
                self._on_tape_closed(folder)
        self._media = MediaReceiver(loop, self.cfg.listen_host if self.cfg.listen_host else "0.0.0.0")
        self._transactions = ServerTransactions(loop, self._ack_timeout, self._t1, min(T2_S, 8 * self._t1))
        self.address = await self._listener.start(self.cfg.listen_host, self.cfg.listen_port)
        self._housekeeping = loop.create_task(self._housekeep())
        return recovered

    async def stop(self) -> None:
        """Close every session's tape cleanly (telling each SRC with a BYE) and stop listening."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self._stopping = True  # new sessions get 503 from now on
        # tapes being created are finished first, so that each is then closed like any other
        if self._pending:
            # bounded: a hung disk must not hang the shutdown (such a tape is recovered at the next start)
            await asyncio.wait(list(self._pending), timeout=STOP_WAIT_S)
        for session in list(self.sessions.values()):
            self._send_bye(session)
            self._close(session, "shutdown")
        await asyncio.sleep(0)  # let the BYEs leave
        if self._byes:
            await asyncio.wait(list(self._byes), timeout=2 * BYE_CONNECT_S)
        await self._listener.close()
        if self._transactions is not None:
            self._transactions.close()
        if self._media is not None:
            self._media.close_all()
        self._publish_figures()
        await self._closed_tapes_handed_on()
        self._disk.shutdown(wait=True)
        self._meta.shutdown(wait=True)
        if self._registry is not None:
            self._registry.close()

    # ---- signalling -------------------------------------------------------------------------------
    def _handle(self, data: bytes, origin: Origin) -> None:
        # the one place that catches everything: a message that trips a bug must not take the recorder (and
        # every call it is recording) down with it; it is logged with its traceback and counted
        try:
            self._dispatch(data, origin)
        except Exception:  # noqa: BLE001
            self.stats.sip_errors += 1
            log.exception("unexpected error handling a message from %s:%d", *origin.remote)

    def _dispatch(self, data: bytes, origin: Origin) -> None:
        try:
            msg = SipMessage.parse(data)
            if msg.is_request:
                validate_request(msg)
        except ParseError as exc:
            self._bad_request(data, origin, exc)
            return
        if not msg.is_request:
            return  # answers to our BYEs: nothing to do with them
        assert self._transactions is not None
        if msg.method != "ACK" and not self.cfg.allowed(origin.remote[0]):
            self._reply_stateless(msg, origin, 403, "Forbidden: address not allowed to record")
            return
        if self._transactions.received(msg, origin.send, origin.reliable):
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
                self._update(msg, origin)
            elif method == "INFO":
                self._in_dialog_ok(msg, origin)
            else:
                self._respond(msg, origin, 405, "Method Not Allowed", headers=[("allow", ALLOWED_METHODS)])
        except CallrecError as exc:
            log.warning("%s %s failed: %s", method, msg.call_id, exc)
            self._respond(msg, origin, 500, f"Server Internal Error: {exc}")

    def _bad_request(self, data: bytes, origin: Origin, exc: ParseError) -> None:
        request = salvage_request(data)
        if request is None or request.method == "ACK":
            self.stats.sip_dropped += 1
            log.debug("dropped a message from %s:%d: %s", *origin.remote, exc)
            return
        self.stats.sip_bad += 1
        response = make_response(request, 400, f"Bad Request: {exc}", to_tag=_new_tag(), received=origin.remote)
        # a header the request lacked (or had unusable) is left out rather than sent empty
        response.headers = [(name, value) for name, value in response.headers if value]
        origin.send(response.serialize())

    def _respond(
        self,
        request: SipMessage,
        origin: Origin,
        status: int,
        reason: str,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str = "",
    ) -> None:
        assert self._transactions is not None
        # every response but 100 carries a To tag (RFC 3261 section 8.2.6.2); a request's own tag is kept
        to_tag = to_tag or _new_tag()
        response = make_response(request, status, reason, to_tag=to_tag, received=origin.remote)
        response.headers.append(("server", self.cfg.user_agent))
        response.headers.extend(headers or [])
        if body:
            response.headers.append(("content-type", content_type))
            response.body = body
        self._transactions.respond(request, response)

    def _reply_stateless(self, request: SipMessage, origin: Origin, status: int, reason: str) -> None:
        response = make_response(request, status, reason, to_tag=_new_tag(), received=origin.remote)
        origin.send(response.serialize())

    def _contact(self, origin: Origin) -> str:
        host = self._advertised(origin)
        host = f"[{host}]" if ":" in host else host
        transport = ";transport=tcp" if origin.reliable else ""
        return f"<sip:callrec@{host}:{self.address[1]}{transport}>;+sip.srs"

    def _options(self, msg: SipMessage, origin: Origin) -> None:
        self._respond(
            msg,
            origin,
            200,
            "OK",
            to_tag=_new_tag() if msg.to_tag is None else None,
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
        if msg.call_id in self.sessions:
            self._respond(msg, origin, 482, "Loop Detected: Call-ID already in a session", to_tag=_new_tag())
            return
        metadata = _metadata(msg)
        source = _source_key(origin.remote[0])
        asked = self._asked_domain(msg, metadata)
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
            self._respond(msg, origin, 403, reason, to_tag=_new_tag())
            return
        refusal = self._refusal() or self._source_refusal(source)
        if refusal is not None:
            self.stats.sessions_rejected += 1
            self._respond(msg, origin, 503, refusal, to_tag=_new_tag(), headers=[("retry-after", str(RETRY_AFTER_S))])
            return
        sdp_body = msg.sdp_body()
        if not sdp_body:
            self._respond(msg, origin, 488, "Not Acceptable Here: the INVITE has no SDP offer", to_tag=_new_tag())
            return
        try:
            sdp = Sdp.parse(sdp_body)
        except ParseError as exc:
            self._respond(msg, origin, 400, f"Bad Request: {exc}", to_tag=_new_tag())
            return
        if not any(recordable(m) for m in sdp.media):
            self._respond(
                msg, origin, 488, "Not Acceptable Here: no recordable RTP/AVP audio stream", to_tag=_new_tag()
            )
            return
        now = time.time()
        call_id = msg.call_id
        info = CallInfo(call_ids=[call_id], source="siprec", started_at=now)
        info.recorder = self._registry.owner if self._registry is not None else ""
        session = RecordingSession(
            call_id=call_id,
            remote_tag=msg.from_tag or "",
            local_tag=_new_tag(),
            info=info,
            folder=tape.tape_folder(self.cfg.tapes_dir, now, tape.new_name(call_id)),
            metadata=metadata,
            remote_target=_target_uri(msg.header("contact") or msg.header("from") or ""),
            last_invite_cseq=msg.cseq[0],
            local_uri=msg.header("to") or "",
            remote_uri=msg.header("from") or "",
            route_set=_route_set(msg),
        )
        session.origin = origin
        session.advertised = self._advertised(origin)
        session.source = source
        info.parties = parties_from(msg, metadata, self.cfg)
        self._label_call(session, msg, domain)
        try:
            self._apply_offer(session, sdp, origin)
        except PortsExhausted as exc:
            self._release_ports(session)
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
        self.sessions[call_id] = session
        self._by_source.setdefault(source, set()).add(call_id)
        self.stats.sessions_total += 1
        loop = asyncio.get_running_loop()
        # 100 Trying only when the answer is slow (RFC 3261 section 17.2.1: not needed within 200 ms)
        loop.call_later(TRYING_AFTER_S, self._trying, msg, origin)
        task = loop.create_task(self._open(session, msg, origin))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _trying(self, msg: SipMessage, origin: Origin) -> None:
        if self._transactions is not None and not self._transactions.has_final(msg):
            self._respond(msg, origin, 100, "Trying")

    async def _open(self, session: RecordingSession, msg: SipMessage, origin: Origin) -> None:
        """Create the tape off the event loop, start reading media, then answer 200 OK."""
        assert self._loop is not None and self._registry is not None
        registry = self._registry
        folder, info = session.folder, session.info

        def create() -> tape.TapeWriter:
            folder.mkdir(parents=True, exist_ok=True)
            registry.register(folder)
            return tape.TapeWriter(folder, info)

        try:
            writer = await self._loop.run_in_executor(self._disk, create)
        except (OSError, CallrecError) as exc:
            log.error("cannot create tape %s: %s", folder, exc)
            self._drop(session)
            if not session.cancelled:
                self._respond(
                    msg, origin, 500, "Server Internal Error: cannot create the tape", to_tag=session.local_tag
                )
            return
        session.tape = writer
        if self._on_tape_opened is not None:
            self._on_tape_opened(folder)
        if session.cancelled:
            self._close(session, "cancel", discard=True)
            return
        self._start_media(session, origin)
        # the route set goes back in the 2xx, in the same order (RFC 3261 section 12.1.1)
        headers = [("record-route", v) for v in msg.header_all("record-route")]
        headers += [("contact", self._contact(origin)), ("allow", ALLOWED_METHODS)]
        if is_siprec(msg):
            headers.append(("require", "siprec"))
        self._respond(
            msg,
            origin,
            200,
            "OK",
            to_tag=session.local_tag,
            headers=headers,
            body=session.answer,
            content_type="application/sdp",
        )
        log.info("recording %s into %s", session.call_id, folder)

    def _reinvite(self, msg: SipMessage, origin: Origin) -> None:
        """A re-INVITE or UPDATE: new streams, codecs, hold/resume (SDP) and metadata updates."""
        session = self._dialog(msg, origin)
        if session is None:
            return
        if msg.header("contact"):  # a target refresh (RFC 3261 section 12.2.2): our BYE goes there now
            session.remote_target = _target_uri(msg.header("contact") or "")
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
                self._apply_offer(session, sdp, origin)
            except PortsExhausted:
                self._respond(
                    msg,
                    origin,
                    500,
                    "Server Internal Error: no free RTP ports",
                    headers=[("retry-after", str(RETRY_AFTER_S))],
                )
                return
            self._start_media(session, origin)
        if sdp is not None or update is not None:
            self._save_info(session)
        # an UPDATE without an offer gets no answer; a re-INVITE without one gets our offer
        answer = session.answer if sdp is not None or msg.method == "INVITE" else b""
        self._respond(
            msg,
            origin,
            200,
            "OK",
            headers=[("contact", self._contact(origin))],
            body=answer,
            content_type="application/sdp",
        )

    def _update(self, msg: SipMessage, origin: Origin) -> None:
        self._reinvite(msg, origin)

    def _in_dialog_ok(self, msg: SipMessage, origin: Origin) -> None:
        if self._dialog(msg, origin) is not None:
            self._respond(msg, origin, 200, "OK")

    def _dialog(self, msg: SipMessage, origin: Origin) -> RecordingSession | None:
        """The session an in-dialog request belongs to, answering 481/500 itself when there is none."""
        session = self.sessions.get(msg.call_id)
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
        session = self.sessions.get(msg.call_id)
        if session is not None and msg.to_tag == session.local_tag:
            session.confirmed = True
            session.touch()

    def _bye(self, msg: SipMessage, origin: Origin) -> None:
        session = self._dialog(msg, origin)
        if session is None:
            return
        self._respond(msg, origin, 200, "OK")
        self._close(session, "bye")

    def _cancel(self, msg: SipMessage, origin: Origin) -> None:
        assert self._transactions is not None
        invite = self._transactions.invite_for_cancel(msg)
        if invite is None:
            self._respond(msg, origin, 481, "Call/Transaction Does Not Exist")
            return
        session = self.sessions.get(invite.call_id)
        tag = session.local_tag if session is not None else _new_tag()
        # the same To tag as the INVITE's response (RFC 3261 section 9.2)
        self._respond(msg, origin, 200, "OK", to_tag=tag)
        if self._transactions.has_final(invite):
            return  # answered already: the CANCEL changes nothing
        self._respond(invite, origin, 487, "Request Terminated", to_tag=tag)
        if session is not None:
            session.cancelled = True
            if session.tape is not None:
                self._close(session, "cancel", discard=True)

    def _ack_timeout(self, invite: SipMessage) -> None:
        session = self.sessions.get(invite.call_id)
        if session is not None and not session.confirmed and not session.closed:
            log.warning("no ACK for the 200 OK of %s: closing the session", invite.call_id)
            # the dialog counts as confirmed now, and its session is ended with a BYE (RFC 3261 13.3.1.4)
            session.confirmed = True
            self._send_bye(session)
            self._close(session, "no-ack")

    # ---- media and tapes --------------------------------------------------------------------------
    def _apply_offer(self, session: RecordingSession, sdp: Sdp, origin: Origin) -> None:
        """Match the offer's ``m=`` lines to the session's (by position), taking ports for new streams."""
        assert self._media is not None
        advertised = self._advertised(origin)
        for index, offer in enumerate(sdp.media):
            if index < len(session.lines):
                line = session.lines[index]
                line.offer = offer
            else:
                line = MediaLine(offer)
                session.lines.append(line)
            if not recordable(offer):
                continue  # a stream removed (port 0) keeps its port until the session ends
            if not line.port:
                self._check_source_share(session)
                line.port = self._bind_port()
            if line.stream is None:
                party = party_of(index, line.label, session, self.cfg)
                if session.info.party(party) is None:
                    session.info.parties.append(Party(id=party, role="participant"))
                line.stream = Stream(party=party, local_addr=advertised, local_port=line.port, label=line.label)
                session.info.streams.append(line.stream)
            line.stream.remote_addr = offer.address or ""
            line.stream.remote_port = offer.port
            for pt in offer.formats:
                codec = offer.codec(pt)
                if codec is not None:
                    line.stream.rtpmap[pt] = codec
        session.answer = build_answer(session, advertised)

    def _bind_port(self) -> int:
        assert self._media is not None
        for _ in range(self._ports.capacity):
            port = self._ports.take()
            try:
                self._media.bind(port)
                return port
            except OSError:
                self._ports.set_aside(port)  # another program holds it
        raise PortsExhausted("every RTP port pair of the range is taken")

    def _start_media(self, session: RecordingSession, origin: Origin) -> None:
        """Receive on the session's ports, each pair only from the sources the SRC's offer advertised for it
        (a later offer that moves a source moves the filter)."""
        assert self._media is not None and session.tape is not None
        advertised = self._advertised(origin)
        for line in session.lines:
            if not line.port:
                continue
            self._media.start(line.port, advertised, session.tape.write_packed)
            offer = line.offer
            if recordable(offer):  # a removed stream (port 0) keeps the filter it had
                host = offer.address or ""
                rtcp = offer.rtcp_port if offer.rtcp_port else offer.port + 1
                self._media.expect(line.port, (host, offer.port), (host, rtcp))
        self._media_figures(session)

    def _media_figures(self, session: RecordingSession) -> int:
        """Copy each stream's foreign packet count and latched source into the call's info; the total."""
        assert self._media is not None
        total = 0
        for line in session.lines:
            if line.port and line.stream is not None:
                foreign, latched = self._media.pair_filter(line.port)
                line.stream.foreign_packets = foreign
                line.stream.latched_addr, line.stream.latched_port = latched or ("", 0)
                total += foreign
        return total

    def _held(self, session: RecordingSession) -> int:
        """Packets held back on the session's ports (a latch being decided): activity, like packets on tape."""
        media = self._media
        return sum(media.held(port) for port in session.ports()) if media is not None else 0

    def _release_ports(self, session: RecordingSession) -> None:
        assert self._media is not None
        if session.tape is not None and self._media_figures(session):
            # once per session, with the counts: another call's media (or a stale fork) was kept off this tape
            dropped = [
                f"port {line.port}: {line.stream.foreign_packets} from "
                + ", ".join(f"{h}:{p}" for h, p in self._media.foreign_sources(line.port))
                for line in session.lines
                if line.port and line.stream is not None and line.stream.foreign_packets
            ]
            log.warning(
                "session %s: dropped %d packets from sources other than the SRC's (%s)",
                session.call_id, sum(line.stream.foreign_packets for line in session.lines if line.stream),
                "; ".join(dropped),
            )  # fmt: skip
        for port in session.ports():
            self._media.close(port)
            self._ports.give_back(port)

    def figures(self) -> dict[str, int]:
        """The counters ``/metrics`` shows (see ``recstats``)."""
        media = self._media
        return {
            "callrec_recorder_sessions": self.stats.sessions_total,
            "callrec_recorder_sessions_rejected": self.stats.sessions_rejected,
            "callrec_recorder_packets_recorded": media.received if media is not None else 0,
            "callrec_recorder_packets_malformed": media.dropped if media is not None else 0,
            "callrec_recorder_packets_foreign": media.foreign if media is not None else 0,
            "callrec_recorder_streams_latched": media.latches if media is not None else 0,
        }

    def _publish_figures(self) -> None:
        """Rewrite the figures file for ``/metrics`` (off the event loop) when a figure changed."""
        figures = self.figures()
        if figures == self._published or self._loop is None:
            return
        self._published = figures
        folder = self.cfg.data_dir

        def write() -> None:
            try:
                recstats.write(folder, figures)
            except OSError as exc:
                log.warning("cannot write %s for /metrics: %s", folder / recstats.STATS_FILE, exc)

        self._disk.submit(write)

    def _drop(self, session: RecordingSession) -> None:
        self._release_ports(session)
        session.closed = True
        self.sessions.pop(session.call_id, None)
        held = self._by_source.get(session.source)
        if held is not None:
            held.discard(session.call_id)
            if not held:
                del self._by_source[session.source]

    def _close(self, session: RecordingSession, reason: str, *, discard: bool = False) -> None:
        """End a session: keep what is still queued in its sockets, release its ports, close its tape."""
        if session.closed:
            return
        assert self._media is not None and self._loop is not None
        writer = session.tape
        if writer is not None:
            for port in session.ports():
                self._media.drain(port)
        self._drop(session)
        self.stats.closed[reason] = self.stats.closed.get(reason, 0) + 1
        if writer is None:
            return
        registry, folder, notify = self._registry, session.folder, self._on_tape_closed
        discarded = self._on_tape_discarded
        session.info.end_reason = reason
        ended = time.time()

        def finish() -> None:
            try:
                writer.close(ended_at=ended, cleanly=True)
            except (OSError, CallrecError) as exc:
                # the marker stays: the next start-up closes the tape as interrupted, nothing is lost
                log.error("tape %s: cannot close it: %s", folder, exc)
                raise
            if discard and writer.packets == 0:
                shutil.rmtree(folder, ignore_errors=True)
            if registry is not None:
                registry.unregister(folder)

        future = self._loop.run_in_executor(self._meta, finish)
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)
        if notify is not None and not discard:
            future.add_done_callback(lambda f: f.exception() is None and notify(folder))
        if discarded is not None and discard:
            future.add_done_callback(lambda f: f.exception() is None and not folder.exists() and discarded(folder))

    async def _closed_tapes_handed_on(self) -> None:
        # the tapes closed by the shutdown are announced (on_tape_closed) before stop() returns: the caller
        # then stops whatever the announcement hands the tape to
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=STOP_WAIT_S)
        await asyncio.sleep(0)  # the futures' done callbacks, scheduled with their results, run now

    def _save_info(self, session: RecordingSession) -> None:
        writer = session.tape
        if writer is None or self._loop is None:
            return
        # a copy: the loop goes on changing the session's info while the copy is written
        snapshot, folder = CallInfo.from_json(writer.info.to_json()), session.folder

        def save() -> None:
            try:
                tape.write_info(folder, snapshot)
            except OSError as exc:
                log.error("tape %s: cannot rewrite call.json: %s", folder, exc)

        self._loop.run_in_executor(self._meta, save)

    # ---- policy -----------------------------------------------------------------------------------
    def _refusal(self) -> str | None:
        """Why a new session cannot be taken now (503), or None."""
        if self._stopping:
            return "Service Unavailable: shutting down"
        if len(self.sessions) >= self.cfg.max_sessions:
            return "Service Unavailable: session limit reached"
        now = time.monotonic()
        if now - self._disk_checked > DISK_CHECK_S:
            self._disk_checked = now
            try:
                self._disk_ok = shutil.disk_usage(self.cfg.tapes_dir).free >= self.cfg.min_free_bytes
            except OSError:
                self._disk_ok = False
        if not self._disk_ok:
            return "Service Unavailable: low disk space"
        return None

    def _source_refusal(self, source: str) -> str | None:
        """Why this SRC address may not open another session now (503), or None."""
        if len(self._by_source.get(source, ())) >= self.cfg.per_source_limit():
            return "Service Unavailable: session limit for this source reached"
        return None

    def _check_source_share(self, session: RecordingSession) -> None:
        """Refuse another RTP port pair to a session whose SRC holds twice its session limit in pairs (a
        source offering many streams per session must not take every port either)."""
        held = sum(len(s.ports()) for c in self._by_source.get(session.source, ()) if (s := self.sessions.get(c)))
        if session.call_id not in self._by_source.get(session.source, ()):
            held += len(session.ports())  # a session being set up is not counted yet
        if held >= 2 * self.cfg.per_source_limit():
            raise SourceShareTaken(f"source {session.source} holds {held} RTP port pairs, its share")

    def _advertised(self, origin: Origin) -> str:
        """The address put in SDP answers and on tapes: configured, the listening one, or the route's."""
        if self.cfg.media_address:
            return self.cfg.media_address
        if self.cfg.listen_host not in ("0.0.0.0", "::", ""):
            return self.cfg.listen_host
        peer = origin.remote[0]
        found = self._local_ip.get(peer)
        if found is None:
            family = socket.AF_INET6 if ":" in peer else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect((peer, 9))
                    found = str(probe.getsockname()[0])
                except OSError:
                    found = origin.local[0]
            self._local_ip[peer] = found
        return found

    def _asked_domain(self, msg: SipMessage, metadata: RecordingMetadata | None) -> str:
        """The domain an INVITE names: the configured SIP header, else the metadata's extension data."""
        ext = metadata.extensions if metadata else {}
        domain = msg.header(self.cfg.domain_header) or next((ext[k] for k in self.cfg.domain_keys if ext.get(k)), "")
        return domain.strip()

    def _label_call(self, session: RecordingSession, msg: SipMessage, domain: str) -> None:
        """Domain (as the trust policy allowed it) and interaction id: from the configured SIP header, else
        the metadata's extension data."""
        info, ext = session.info, session.metadata.extensions if session.metadata else {}
        interaction = msg.header(self.cfg.interaction_header) or next(
            (ext[k] for k in self.cfg.interaction_keys if ext.get(k)), ""
        )
        if not interaction and session.metadata is not None:
            interaction = session.metadata.group_id
        info.domain = domain
        info.interaction_id = interaction.strip()
        if session.metadata is not None:
            info.original_call_ids = list(session.metadata.call_ids)

    def _send_bye(self, session: RecordingSession) -> None:
        """End the recording dialog from our side (RFC 3261 sections 12.2.1.1 and 15.1.1): a BYE built from the
        dialog's state, sent to the first route if it is a loose router, else to the remote target."""
        origin = session.origin
        if origin is None or not session.confirmed:
            return
        session.local_cseq += 1
        uri, routes = session.remote_target or _target_uri(session.remote_uri), list(session.route_set)
        next_hop = _target_uri(routes[0]) if routes else uri
        if routes and not _loose(routes[0]):
            # a strict router: it is the Request-URI, and the remote target goes last in the Route headers
            uri, routes = _strict_uri(routes[0]), [*routes[1:], f"<{uri}>"]
        host = self._advertised(origin)
        proto = "TCP" if origin.reliable else "UDP"
        sent_by = f"[{host}]" if ":" in host else host
        bye = SipMessage(method="BYE", uri=uri)
        bye.headers = [
            ("via", f"SIP/2.0/{proto} {sent_by}:{self.address[1]};branch=z9hG4bK{_new_tag()};rport"),
            ("max-forwards", "70"),
            ("from", _with_tag(session.local_uri or f"<sip:callrec@{sent_by}>", session.local_tag)),
            ("to", session.remote_uri or f"<{uri}>;tag={session.remote_tag}"),
            ("call-id", session.call_id),
            ("cseq", f"{session.local_cseq} BYE"),
            *(("route", route) for route in routes),
            ("user-agent", self.cfg.user_agent),
        ]
        self._send_to(origin, _hop_address(next_hop), bye.serialize())

    def _send_to(self, origin: Origin, hop: tuple[str, int] | None, payload: bytes) -> None:
        """Send a request of ours to ``hop`` over the dialog's transport: over UDP from our SIP socket, over TCP
        on a connection to the hop (the SRC's own when it is that). A hop that is no address (a host name) is
        reached the way the INVITE came."""
        if hop is None or hop == origin.remote:
            origin.send(payload)
        elif not origin.reliable:
            self._listener.sendto(payload, hop)
        elif self._loop is not None:
            task = self._loop.create_task(_send_tcp(hop, payload, origin))
            self._byes.add(task)
            task.add_done_callback(self._byes.discard)

    async def _housekeep(self) -> None:
        """Once a second: push every tape's packets to the OS; close sessions gone idle; publish figures."""
        while True:
            await asyncio.sleep(min(HOUSEKEEPING_S, self.cfg.flush_interval_s))
            self._publish_figures()
            now = time.monotonic()
            for session in list(self.sessions.values()):
                writer = session.tape
                if writer is None:
                    continue
                try:
                    writer.flush()
                except CallrecError as exc:
                    log.error("tape %s: %s", session.folder, exc)
                packets = writer.packets + self._held(session)
                if packets != session.packets_at_check:
                    session.packets_at_check = packets
                    session.last_activity = now
                elif now - session.last_activity > self.cfg.idle_timeout_s:
                    log.warning("session %s idle for %.0f s: closing it", session.call_id, self.cfg.idle_timeout_s)
                    self._send_bye(session)
                    self._close(session, "idle")


def _source_key(address: str) -> str:
    """One key per SRC host, whatever the port or IPv4-mapped spelling."""
    ip = source_ip(address)
    return str(ip) if ip is not None else address


def _new_tag() -> str:
    return secrets.token_hex(6)


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


def _target_uri(value: str) -> str:
    """The URI of a name-addr (``"Name" <sip:a@b;lr>;p=1``) or addr-spec (``sip:a@b;p=1``) header value."""
    if "<" in value and ">" in value:
        return value.split("<", 1)[1].split(">", 1)[0]
    return value.split(";")[0].strip() or "sip:src"


def _route_set(invite: SipMessage) -> list[str]:
    """The Record-Route entries of a request, in the order received (a header may list several)."""
    entries: list[str] = []
    for value in invite.header_all("record-route"):
        entries += [entry.strip() for entry in _split_commas(value) if entry.strip()]
    return entries


def _split_commas(value: str) -> list[str]:
    """A header value split at the commas that separate its entries (not those inside ``<>`` or quotes)."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(value):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "<>":
            depth += 1 if char == "<" else -1
        elif char == "," and not quoted and depth <= 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def _uri_params(uri: str) -> list[str]:
    return [p.strip().lower() for p in uri.split("?", 1)[0].split(";")[1:]]


def _loose(route: str) -> bool:
    return any(p == "lr" or p.startswith("lr=") for p in _uri_params(_target_uri(route)))


def _strict_uri(route: str) -> str:
    """A strict router's URI as a Request-URI: without the parameters a Request-URI may not carry (RFC 3261
    section 19.1.1: method, maddr, ttl, headers)."""
    uri = _target_uri(route).split("?", 1)[0]
    head, *params = uri.split(";")
    kept = [p for p in params if p.split("=")[0].strip().lower() not in ("method", "maddr", "ttl")]
    return ";".join([head, *kept])


def _with_tag(value: str, tag: str) -> str:
    """A From/To value with our tag: as the To of our 2xx had it (after an addr-spec without angle brackets, a
    parameter belongs to the header too: RFC 3261 section 20.10)."""
    return f"{value};tag={tag}"


def _hop_address(uri_or_route: str) -> tuple[str, int] | None:
    """Where a SIP URI is sent (RFC 3263 without DNS: a literal address, its port or 5060/5061); None for a
    host name."""
    uri = _target_uri(uri_or_route) if "<" in uri_or_route else uri_or_route
    scheme, _, rest = uri.partition(":")
    hostport = rest.split(";", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    maddr = next((p.split("=", 1)[1] for p in _uri_params(uri) if p.startswith("maddr=")), "")
    if hostport.startswith("["):
        host, _, port_text = hostport[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = hostport.partition(":")
    host = maddr or host
    default = 5061 if scheme.lower() == "sips" else 5060
    try:
        ipaddress.ip_address(host)
        port = int(port_text) if port_text else default
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 else None


async def _send_tcp(hop: tuple[str, int], payload: bytes, origin: Origin) -> None:
    """A request of ours to a next hop we hold no connection to: a connection of its own (RFC 3261 section
    18.1.1), closed once the request is written. A hop that cannot be reached (an SRC behind NAT) gets it on
    the connection the INVITE came on, the way RFC 5923 reuses one."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*hop), BYE_CONNECT_S)
    except (OSError, TimeoutError) as exc:
        log.info("cannot connect to %s:%d (%s): the BYE goes on the SRC's connection", *hop, exc)
        origin.send(payload)
        return
    try:
        writer.write(payload)
        await asyncio.wait_for(writer.drain(), BYE_CONNECT_S)
    except (OSError, TimeoutError) as exc:
        log.warning("cannot send a BYE to %s:%d: %s", *hop, exc)
    finally:
        writer.close()
