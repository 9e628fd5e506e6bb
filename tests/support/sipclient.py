"""A small SIPREC client (SRC) for the recorder's tests, and a way to run a ``Recorder`` beside them.

``RecorderThread`` runs a real ``Recorder`` on its own event loop in a background thread, so tests talk to
it over real UDP/TCP sockets with plain blocking calls. ``SipClient`` sends raw bytes or built requests and
reads responses; ``Dialog`` keeps one call's Call-ID, tags and CSeq; ``send_rtp`` sends real RTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from callrec.config import RecorderConfig
from callrec.models import CallInfo
from callrec.recorder.recorder import Recorder
from callrec.wire.sdp import Sdp
from callrec.wire.sip import SipMessage, StreamFramer

T = TypeVar("T")
HOST = "127.0.0.1"
BOUNDARY = "callrecTestBoundary"

METADATA = """<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="c2Vzc2lvbg"><sipSessionID>original-call</sipSessionID></session>
  <participant participant_id="cGFydC1h">
    <nameID aor="sip:+15551230001@pbx.example.com"><name>Alice Caller</name></nameID>
  </participant>
  <participant participant_id="cGFydC1i">
    <nameID aor="sip:+15559870002@pbx.example.com"><name>Bob Callee</name></nameID>
  </participant>
  <stream stream_id="c3RyZWFtMQ" session_id="c2Vzc2lvbg"><label>1</label></stream>
  <stream stream_id="c3RyZWFtMg" session_id="c2Vzc2lvbg"><label>2</label></stream>
  <participantstreamassoc participant_id="cGFydC1h"><send>c3RyZWFtMQ</send><recv>c3RyZWFtMg</recv>
  </participantstreamassoc>
  <participantstreamassoc participant_id="cGFydC1i"><send>c3RyZWFtMg</send><recv>c3RyZWFtMQ</recv>
  </participantstreamassoc>
</recording>
"""


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def free_rtp_range(size: int = 40) -> tuple[int, int]:
    """An even port range, outside the kernel's ephemeral range, whose every port is free right now.

    Other tests and benchmarks hold thousands of ports at times; the recorder skips a port taken later.
    """
    low, high = 1024, 32768
    with contextlib.suppress(OSError, ValueError):
        low_text, high_text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        high = int(low_text)
    for _ in range(200):
        first = 2 * ((low + secrets.randbelow(high - low - size)) // 2)
        if _all_free(first, first + size):
            return first, first + size
    raise AssertionError("no free RTP port range found")


def _all_free(first: int, last: int) -> bool:
    held: list[socket.socket] = []
    try:
        for port in range(first, last + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(sock)
            sock.bind((HOST, port))
    except OSError:
        return False
    finally:
        for sock in held:
            sock.close()
    return True


def recorder_config(data: Path, **overrides: Any) -> RecorderConfig:
    first, last = free_rtp_range()
    cfg = RecorderConfig(listen_host=HOST, listen_port=0, rtp_first=first, rtp_last=last, data_dir=data)
    cfg.min_free_bytes = 0
    for name, value in overrides.items():
        setattr(cfg, name, value)
    return cfg


# ---- the recorder in a thread ---------------------------------------------------------------------
class RecorderThread:
    """A ``Recorder`` running on an event loop of its own; ``closed`` collects tapes as they close."""

    def __init__(self, cfg: RecorderConfig, **kwargs: Any) -> None:
        self.cfg = cfg
        self.closed: list[Path] = []
        self.recorder = Recorder(cfg, on_tape_closed=self.closed.append, **kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="recorder", daemon=True)
        self.stopped = False

    def __enter__(self) -> RecorderThread:
        self._thread.start()
        self.run(self.recorder.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.recorder.address

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the recorder's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the recorder's loop (to read its state safely) and return what it returns."""
        future: Future[T] = Future()

        def runner() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting test
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(runner)
        return future.result(timeout)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            self.run(self.recorder.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def session_count(self) -> int:
        return self.call(lambda: len(self.recorder.sessions))

    def closed_tape_of(self, call_id: str, timeout: float = 5.0) -> Path:
        """The tape of ``call_id`` once it is closed."""

        def find() -> Path | None:
            return next((f for f in list(self.closed) if read_call(f)["call_ids"][0] == call_id), None)

        return wait_for(find, timeout, f"the tape of {call_id} to close")

    def wait_closed(self, count: int = 1, timeout: float = 5.0) -> list[Path]:
        wait_for(lambda: len(self.closed) >= count, timeout, f"{count} closed tape(s)")
        return list(self.closed)


def tapes(data: Path) -> list[Path]:
    """Every tape folder under ``data/tapes``."""
    root = data / "tapes"
    if not root.exists():
        return []
    return sorted(p.parent for p in root.rglob("call.json") if not any(part.startswith(".") for part in p.parts))


def read_call(folder: Path) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads((folder / "call.json").read_text("utf-8"))
    return data


def info_of(folder: Path) -> CallInfo:
    return CallInfo.from_json(read_call(folder))


# ---- SIP --------------------------------------------------------------------------------------------
class SipClient:
    """One SIP endpoint on 127.0.0.1 talking to ``server`` over UDP or TCP."""

    def __init__(self, server: tuple[str, int], transport: str = "udp", *, local_host: str | None = None) -> None:
        """``local_host``: the address the client sends from (another loopback one plays another SRC); by
        default 127.0.0.1 over UDP, and over TCP whatever the route to ``server`` gives."""
        self.server = server
        self.transport = transport.upper()
        if self.transport == "UDP":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind((local_host or HOST, 0))
        else:
            source = (local_host, 0) if local_host is not None else None
            self.sock = socket.create_connection(server, timeout=5, source_address=source)
        self.local: tuple[str, int] = self.sock.getsockname()[:2]
        self._framer = StreamFramer()
        self._queue: list[bytes] = []
        # requests the recorder sent us (BYE on idle, no-ack, shutdown)
        self.requests: list[SipMessage] = []

    def __enter__(self) -> SipClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | SipMessage) -> None:
        raw = data.serialize() if isinstance(data, SipMessage) else data
        if self.transport == "UDP":
            self.sock.sendto(raw, self.server)
        else:
            self.sock.sendall(raw)

    def recv_raw(self, timeout: float = 5.0) -> bytes | None:
        """The next whole message as bytes, or None when nothing came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self._queue:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                if self.transport == "UDP":
                    data, _ = self.sock.recvfrom(65535)
                    self._queue.append(data)
                else:
                    data = self.sock.recv(65535)
                    if not data:
                        raise ConnectionError("the recorder closed the TCP connection")
                    self._queue.extend(self._framer.feed(data))
            except TimeoutError:
                return None
        return self._queue.pop(0)

    def recv(self, timeout: float = 5.0) -> SipMessage | None:
        """The next message, parsed (a message that does not parse fails the test)."""
        raw = self.recv_raw(timeout)
        return None if raw is None else SipMessage.parse(raw)

    def response(self, timeout: float = 5.0, final: bool = True, match: SipMessage | None = None) -> SipMessage:
        """The next response (the final one unless ``final`` is False); requests are kept in ``requests``.

        With ``match``, responses to other requests (another Call-ID or CSeq) are skipped.
        """
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise AssertionError("no response from the recorder")
            if msg.is_request:
                self.requests.append(msg)
                continue
            if final and (msg.status or 0) < 200:
                continue
            if match is not None and (msg.call_id, msg.header("cseq")) != (match.call_id, match.header("cseq")):
                continue
            return msg

    def responses_within(self, seconds: float) -> list[SipMessage]:
        """Every response that arrives within ``seconds`` (to check that nothing, or only so much, comes)."""
        out: list[SipMessage] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is None:
                break
            if msg.is_request:
                self.requests.append(msg)
            else:
                out.append(msg)
        return out

    def wait_request(self, method: str, timeout: float = 5.0) -> SipMessage:
        """A request the recorder sends us (its BYE), answered 200."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.requests:
                if msg.method == method:
                    self.requests.remove(msg)
                    return msg
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise AssertionError(f"the recorder sent no {method}")
            if msg.is_request:
                self.requests.append(msg)

    def options(self) -> SipMessage:
        """Send OPTIONS outside any dialog and return the final response."""
        options = Dialog(self).request("OPTIONS")
        self.send(options)
        return self.response(match=options)


@dataclass
class Dialog:
    """One call seen from the SRC: Call-ID, tags and CSeq, and requests built for it."""

    client: SipClient
    call_id: str = field(default_factory=lambda: f"{secrets.token_hex(8)}@src.test")
    from_tag: str = field(default_factory=lambda: secrets.token_hex(4))
    to_tag: str | None = None
    cseq: int = 0
    last_invite: SipMessage | None = None

    def request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str = "",
        headers: Iterable[tuple[str, str]] = (),
        cseq: int | None = None,
        branch: str | None = None,
    ) -> SipMessage:
        """A request in this dialog (the next CSeq unless given; ACK and CANCEL take the caller's)."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        host, port = self.client.local
        msg = SipMessage(method=method, uri=f"sip:srs@{self.client.server[0]}:{self.client.server[1]}")
        to = f"<sip:srs@{self.client.server[0]}>" + (f";tag={self.to_tag}" if self.to_tag else "")
        msg.headers = [
            ("via", f"SIP/2.0/{self.client.transport} {host}:{port};branch={branch or new_branch()};rport"),
            ("max-forwards", "70"),
            ("from", f"<sip:src@{host}:{port}>;tag={self.from_tag}"),
            ("to", to),
            ("call-id", self.call_id),
            ("cseq", f"{cseq} {method}"),
            ("contact", f"<sip:src@{host}:{port}>;+sip.src"),
            *headers,
        ]
        if body:
            msg.headers.append(("content-type", content_type))
            msg.body = body
        return msg

    def invite(
        self,
        ports: list[int] | None = None,
        *,
        metadata: str | None = METADATA,
        headers: Iterable[tuple[str, str]] = (),
        sdp: str | None = None,
        send: bool = True,
    ) -> SipMessage:
        """Build (and send) a SIPREC INVITE with one PCMA stream per port and the metadata."""
        offer = sdp if sdp is not None else siprec_sdp(ports or [40000, 40002])
        ctype, body = siprec_body(offer, metadata)
        extra = [("require", "siprec"), *headers]
        msg = self.request("INVITE", body=body, content_type=ctype, headers=extra)
        self.last_invite = msg
        if send:
            self.client.send(msg)
        return msg

    def answer(self, response: SipMessage) -> SipMessage:
        """Take the To tag of a response and return it."""
        if response.to_tag:
            self.to_tag = response.to_tag
        return response

    def ack(self, response: SipMessage | None = None) -> SipMessage:
        """ACK the final response of the last INVITE."""
        if response is not None:
            self.answer(response)
        assert self.last_invite is not None
        number = self.last_invite.cseq[0]
        ack = self.request("ACK", cseq=number)
        if response is not None and (response.status or 0) >= 300:
            # the ACK of a failure belongs to the INVITE transaction: same branch (RFC 3261 section 17.1.1.3)
            ack.headers[0] = ("via", self.last_invite.header("via") or "")
        self.client.send(ack)
        return ack

    def call(self, ports: list[int] | None = None, **kwargs: Any) -> SipMessage:
        """INVITE, wait for the 200 OK, ACK it; return the 200 OK."""
        invite = self.invite(ports, **kwargs)
        ok = self.client.response(match=invite)
        assert ok.status == 200, f"{ok.status} {ok.reason}"
        self.ack(ok)
        return ok

    def reinvite(self, sdp: str, *, metadata: str | None = None) -> SipMessage:
        """A re-INVITE with ``sdp`` (and metadata when given), ACKed; returns the final response."""
        ctype, body = siprec_body(sdp, metadata)
        msg = self.request("INVITE", body=body, content_type=ctype, headers=[("require", "siprec")])
        self.last_invite = msg
        self.client.send(msg)
        response = self.client.response(match=msg)
        self.ack(response)
        return response

    def bye(self) -> SipMessage:
        bye = self.request("BYE")
        self.client.send(bye)
        return self.client.response(match=bye)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def siprec_sdp(
    ports: list[int], codecs: Iterable[tuple[int, str]] = ((8, "PCMA/8000"),), direction: str = "sendonly"
) -> str:
    """An SRC's offer: one audio stream per port (port 0: removed), labelled 1, 2, ..."""
    codecs = list(codecs)
    lines = ["v=0", f"o=src 1 {secrets.randbelow(10**6)} IN IP4 {HOST}", "s=SIPREC", f"c=IN IP4 {HOST}", "t=0 0"]
    for i, port in enumerate(ports, start=1):
        lines.append(f"m=audio {port} RTP/AVP {' '.join(str(pt) for pt, _ in codecs)}")
        lines += [f"a=rtpmap:{pt} {name}" for pt, name in codecs]
        lines += [f"a=label:{i}", f"a={direction}"]
    return "\r\n".join(lines) + "\r\n"


def siprec_body(sdp: str, metadata: str | None) -> tuple[str, bytes]:
    """(Content-Type, body): the SDP alone, or multipart/mixed with the rs-metadata."""
    if metadata is None:
        return "application/sdp", sdp.encode()
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n"
        f"--{BOUNDARY}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n"
        f"{metadata}\r\n--{BOUNDARY}--\r\n"
    )
    return f"multipart/mixed;boundary={BOUNDARY}", body.encode()


def answered_ports(response: SipMessage) -> list[int]:
    """The port of each ``m=`` line of the recorder's SDP answer."""
    body = response.sdp_body()
    assert body, "the response has no SDP"
    return [m.port for m in Sdp.parse(body).media]


# ---- RTP --------------------------------------------------------------------------------------------
def rtp_packet(
    seq: int, ts: int, ssrc: int, pt: int = 8, payload: bytes = b"\xd5" * 160, marker: bool = False
) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


class RtpSender:
    """Sends one RTP stream from a socket of its own to a recorder port."""

    def __init__(self, port: int, ssrc: int | None = None, pt: int = 8) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = port
        self.ssrc = ssrc if ssrc is not None else int.from_bytes(os.urandom(4), "big")
        self.pt = pt
        self.sent = 0

    def send(self, count: int, payload: bytes = b"\xd5" * 160) -> None:
        for _ in range(count):
            n = self.sent
            self.sock.sendto(rtp_packet(n, n * 160, self.ssrc, self.pt, payload, marker=n == 0), (HOST, self.port))
            self.sent += 1

    def close(self) -> None:
        self.sock.close()
