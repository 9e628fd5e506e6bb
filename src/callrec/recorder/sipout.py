"""What the SRS sends: responses through the server transactions, stateless answers (the 400 to a request
it cannot read), and BYEs of its own.

Also the address the SRS advertises to an SRC (in Contact, Via and the SDP answer): the configured media
address, the listening one, or the one the route to the SRC leaves from.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from callrec.config import RecorderConfig
from callrec.errors import ParseError
from callrec.recorder.listener import Origin, SipListener
from callrec.recorder.recstats import RecorderStats
from callrec.recorder.session import RecordingSession, is_siprec
from callrec.recorder.sipuri import hop_address, loose, new_tag, strict_uri, target_uri, with_tag
from callrec.recorder.transactions import ServerTransactions
from callrec.wire.sip import SipMessage, make_response
from callrec.wire.sipvalidate import salvage_request

log = logging.getLogger("callrec.recorder")

ALLOWED_METHODS = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO"
BYE_CONNECT_S = 2.0  # a BYE that needs a TCP connection of its own gives up after this


class SipOut:
    """The SRS's side of the wire: ``transactions``, ``loop`` and ``address`` are set once it listens."""

    def __init__(self, cfg: RecorderConfig, stats: RecorderStats, listener: SipListener) -> None:
        self.cfg = cfg
        self.stats = stats
        self.listener = listener
        self.transactions: ServerTransactions | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.address: tuple[str, int] = ("", 0)
        self.byes: set[asyncio.Task[None]] = set()  # BYEs sent on TCP connections of their own
        self._local_ip: dict[str, str] = {}

    def respond(
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
        assert self.transactions is not None
        # every response but 100 carries a To tag (RFC 3261 section 8.2.6.2); a request's own tag is kept
        to_tag = to_tag or new_tag()
        response = make_response(request, status, reason, to_tag=to_tag, received=origin.remote)
        response.headers.append(("server", self.cfg.user_agent))
        response.headers.extend(headers or [])
        if body:
            response.headers.append(("content-type", content_type))
            response.body = body
        self.transactions.respond(request, response)

    def accept(self, invite: SipMessage, origin: Origin, session: RecordingSession) -> None:
        """The 200 OK to a new session's INVITE, with our SDP answer."""
        # the route set goes back in the 2xx, in the same order (RFC 3261 section 12.1.1)
        headers = [("record-route", v) for v in invite.header_all("record-route")]
        headers += [("contact", self.contact(origin)), ("allow", ALLOWED_METHODS)]
        if is_siprec(invite):
            headers.append(("require", "siprec"))
        self.respond(
            invite,
            origin,
            200,
            "OK",
            to_tag=session.local_tag,
            headers=headers,
            body=session.answer,
            content_type="application/sdp",
        )

    def bad_request(self, data: bytes, origin: Origin, exc: ParseError) -> None:
        request = salvage_request(data)
        if request is None or request.method == "ACK":
            self.stats.sip_dropped += 1
            log.debug("dropped a message from %s:%d: %s", *origin.remote, exc)
            return
        self.stats.sip_bad += 1
        response = make_response(request, 400, f"Bad Request: {exc}", to_tag=new_tag(), received=origin.remote)
        # a header the request lacked (or had unusable) is left out rather than sent empty
        response.headers = [(name, value) for name, value in response.headers if value]
        origin.send(response.serialize())

    def reply_stateless(self, request: SipMessage, origin: Origin, status: int, reason: str) -> None:
        response = make_response(request, status, reason, to_tag=new_tag(), received=origin.remote)
        origin.send(response.serialize())

    def contact(self, origin: Origin) -> str:
        host = self.advertised(origin)
        host = f"[{host}]" if ":" in host else host
        transport = ";transport=tcp" if origin.reliable else ""
        return f"<sip:callrec@{host}:{self.address[1]}{transport}>;+sip.srs"

    def advertised(self, origin: Origin) -> str:
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

    def send_bye(self, session: RecordingSession) -> None:
        """End the recording dialog from our side (RFC 3261 sections 12.2.1.1 and 15.1.1): a BYE built from the
        dialog's state, sent to the first route if it is a loose router, else to the remote target."""
        origin = session.origin
        if origin is None or not session.confirmed:
            return
        session.local_cseq += 1
        uri, routes = session.remote_target or target_uri(session.remote_uri), list(session.route_set)
        next_hop = target_uri(routes[0]) if routes else uri
        if routes and not loose(routes[0]):
            # a strict router: it is the Request-URI, and the remote target goes last in the Route headers
            uri, routes = strict_uri(routes[0]), [*routes[1:], f"<{uri}>"]
        host = self.advertised(origin)
        proto = "TCP" if origin.reliable else "UDP"
        sent_by = f"[{host}]" if ":" in host else host
        bye = SipMessage(method="BYE", uri=uri)
        bye.headers = [
            ("via", f"SIP/2.0/{proto} {sent_by}:{self.address[1]};branch=z9hG4bK{new_tag()};rport"),
            ("max-forwards", "70"),
            ("from", with_tag(session.local_uri or f"<sip:callrec@{sent_by}>", session.local_tag)),
            ("to", session.remote_uri or f"<{uri}>;tag={session.remote_tag}"),
            ("call-id", session.call_id),
            ("cseq", f"{session.local_cseq} BYE"),
            *(("route", route) for route in routes),
            ("user-agent", self.cfg.user_agent),
        ]
        self.send_to(origin, hop_address(next_hop), bye.serialize())

    def send_to(self, origin: Origin, hop: tuple[str, int] | None, payload: bytes) -> None:
        """Send a request of ours to ``hop`` over the dialog's transport: over UDP from our SIP socket, over TCP
        on a connection to the hop (the SRC's own when it is that). A hop that is no address (a host name) is
        reached the way the INVITE came."""
        if hop is None or hop == origin.remote:
            origin.send(payload)
        elif not origin.reliable:
            self.listener.sendto(payload, hop)
        elif self.loop is not None:
            task = self.loop.create_task(_send_tcp(hop, payload, origin))
            self.byes.add(task)
            task.add_done_callback(self.byes.discard)


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
