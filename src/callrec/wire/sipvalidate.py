"""What a server checks of a SIP request before acting on it, and how it answers one it cannot parse."""

from __future__ import annotations

import re

from callrec.errors import ParseError
from callrec.wire.sip import SipMessage, _canonical

REQUIRED_HEADERS = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
# a response is matched to its request by the top Via's branch and the CSeq (RFC 3261 section 17.1.3):
# without these two a 400 would reach nobody
ANSWERABLE_HEADERS = ("via", "cseq")
_REQUEST_START = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0\s*$")
_CSEQ = re.compile(r"^\s*(\d{1,10})\s+([A-Za-z]+)\s*$")
# control characters other than tab: never in a header (RFC 3261 section 25.1); a CR alone splits no line
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
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
    if _CONTROL.search(msg.uri or ""):
        raise ParseError("SIP request URI has a control character")
    for _, value in msg.headers:
        if _CONTROL.search(value):
            raise ParseError("SIP header has a control character")
        if "\ufffd" in value:
            raise ParseError("SIP header is not valid UTF-8")
    check_multipart(msg)


def check_multipart(msg: SipMessage) -> None:
    """``ParseError`` when a multipart body (a SIPREC offer) cannot be cut into its parts."""
    ctype = msg.header("content-type") or ""
    if not ctype.split(";")[0].strip().lower().startswith("multipart/") or not msg.body:
        return
    match = re.search(r'boundary\s*=\s*"?([^";]+)"?', ctype, re.IGNORECASE)
    if match is None:
        raise ParseError("SIP multipart body has no boundary parameter")
    delimiter = b"--" + match.group(1).strip().encode("utf-8", "replace")
    chunks = msg.body.split(delimiter)[1:]
    if not chunks:
        raise ParseError("SIP multipart body has no part with its boundary")
    for chunk in chunks:
        if chunk.startswith(b"--"):
            return  # the closing delimiter (some SRCs leave it out: what came before still counts)
        # the part's headers run to its first blank line; a line without a colon before it means the blank
        # line is missing (the content was read as headers)
        lines = chunk.replace(b"\r\n", b"\n").split(b"\n")[1:]
        for line in lines:
            if not line.strip():
                break
            if b":" not in line:
                raise ParseError("SIP multipart body part has no blank line after its headers")
        else:
            raise ParseError("SIP multipart body part has no blank line after its headers")


def salvage_request(data: bytes) -> SipMessage | None:
    """The parts of a broken request needed to answer it 400, or None when it cannot be answered.

    Via and CSeq must be there (and clean) for the answer to find its request; From, To and Call-ID are
    copied when present and clean.
    """
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    match = _REQUEST_START.match(lines[0])
    if match is None:
        return None
    msg = SipMessage(method=match.group(1).upper(), uri=match.group(2))
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = _canonical(name.strip())
        value = value.strip()
        if colon and key in dict(REQUIRED_HEADERS) and value and not _unsafe(value):
            msg.headers.append((key, value))
    if any(not msg.header(key) for key in ANSWERABLE_HEADERS):
        return None
    if _CSEQ.match(msg.header("cseq") or "") is None:
        return None
    return msg


def _unsafe(value: str) -> bool:
    """A value that cannot be echoed into a response as it is."""
    return _CONTROL.search(value) is not None or "\ufffd" in value
