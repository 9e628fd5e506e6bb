"""What a server checks of a SIP request before acting on it, and how it answers one it cannot parse."""

from __future__ import annotations

import re

from callrec.capture.sip import SipMessage, _canonical
from callrec.errors import ParseError

REQUIRED_HEADERS = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_REQUEST_START = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0\s*$")
_CSEQ = re.compile(r"^\s*(\d{1,10})\s+([A-Za-z]+)\s*$")
MAX_CSEQ = 2**31 - 1  # RFC 3261 section 8.1.1.5


def validate_request(msg: SipMessage) -> None:
    """``ParseError`` with one sentence when a request lacks what RFC 3261 section 8.1.1 requires."""
    for key, name in REQUIRED_HEADERS:
        if not (msg.header(key) or "").strip():
            raise ParseError(f"SIP request has no {name} header")
    match = _CSEQ.match(msg.header("cseq") or "")
    if match is None or int(match.group(1)) > MAX_CSEQ:
        raise ParseError("SIP CSeq header is not 'number METHOD'")
    if match.group(2).upper() != msg.method:
        raise ParseError("SIP CSeq method does not match the request method")
    if "<" in (msg.header("from") or "") and ">" not in (msg.header("from") or ""):
        raise ParseError("SIP From header has an unclosed '<'")
    if "<" in (msg.header("to") or "") and ">" not in (msg.header("to") or ""):
        raise ParseError("SIP To header has an unclosed '<'")


def salvage_request(data: bytes) -> SipMessage | None:
    """The parts of a broken request needed to answer it 400, or None when it cannot be answered."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    match = _REQUEST_START.match(lines[0])
    if match is None:
        return None
    msg = SipMessage(method=match.group(1).upper(), uri=match.group(2))
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = _canonical(name.strip())
        if colon and key in dict(REQUIRED_HEADERS):
            msg.headers.append((key, value.strip()))
    if any(not msg.header(key) for key, _ in REQUIRED_HEADERS):
        return None  # without these a response cannot be matched to the request
    return msg
