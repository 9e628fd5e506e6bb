"""SIP (RFC 3261) messages: parsing, serialising, and framing on a byte stream."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from callrec.errors import ParseError

COMPACT_FORMS = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "u": "allow-events",
    "o": "event",
    "r": "refer-to",
}
_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+) SIP/2\.0$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 (\d{3})(?: (.*))?$")
_TAG = re.compile(r";\s*tag=([^;>\s]+)", re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
MAX_MESSAGE_BYTES = 1 << 16


@dataclass(slots=True)
class SipMessage:
    """A SIP request (``method`` set) or response (``status`` set); header names are kept lowercase."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def header(self, name: str) -> str | None:
        """The first value of a header (full or compact name, any case)."""
        key = _canonical(name)
        for n, v in self.headers:
            if n == key:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        key = _canonical(name)
        return [v for n, v in self.headers if n == key]

    @property
    def call_id(self) -> str:
        return self.header("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        value = self.header("cseq") or ""
        number, _, method = value.strip().partition(" ")
        if not (number.isascii() and number.isdigit()):
            raise ParseError("SIP CSeq header is not 'number METHOD'")
        return int(number), method.strip().upper()

    @property
    def from_tag(self) -> str | None:
        return _tag(self.header("from"))

    @property
    def to_tag(self) -> str | None:
        return _tag(self.header("to"))

    def sdp_body(self) -> bytes | None:
        """The SDP in the body, taken out of a multipart/mixed body (SIPREC) when needed."""
        return self.body_part("application/sdp")

    def body_part(self, content_type: str) -> bytes | None:
        """The body, or the part of a multipart body, whose content type is ``content_type``."""
        ctype = (self.header("content-type") or "").strip()
        kind = ctype.split(";")[0].strip().lower()
        if kind == content_type:
            return self.body
        if not kind.startswith("multipart/"):
            return None
        match = _BOUNDARY.search(ctype)
        if match is None:
            return None
        for part in split_multipart(self.body, match.group(1)):
            headers, body = part
            if headers.get("content-type", "").split(";")[0].strip().lower() == content_type:
                return body
        return None

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        """Parse one whole message; raise ``ParseError`` with an exact sentence when it is not SIP."""
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = data.partition(b"\n\n")
            if not sep:
                raise ParseError("SIP message has no blank line after its headers")
        lines = head.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
        msg = cls()
        start = lines[0].strip()
        if (m := _REQUEST_LINE.match(start)) is not None:
            msg.method, msg.uri = m.group(1).upper(), m.group(2)
        elif (m := _STATUS_LINE.match(start)) is not None:
            msg.status, msg.reason = int(m.group(1)), m.group(2) or ""
        else:
            raise ParseError("SIP start line is neither a request nor a status line")
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and msg.headers:
                # header folding (RFC 3261 section 7.3.1)
                name, value = msg.headers[-1]
                msg.headers[-1] = (name, value + " " + line.strip())
                continue
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise ParseError("SIP header line has no colon")
            msg.headers.append((_canonical(name.strip()), value.strip()))
        length_text = msg.header("content-length")
        if length_text is not None:
            if not (length_text.isascii() and length_text.isdigit()):
                raise ParseError("SIP Content-Length is not a number")
            length = int(length_text)
            if length > len(body):
                raise ParseError("SIP body is shorter than its Content-Length")
            body = body[:length]
        msg.body = bytes(body)
        return msg

    def serialize(self) -> bytes:
        """The message's bytes, with Content-Length set to the body's length."""
        if self.method is not None:
            start = f"{self.method} {self.uri} SIP/2.0"
        else:
            start = f"SIP/2.0 {self.status} {self.reason}".rstrip()
        lines = [start]
        lines += [f"{_display(n)}: {v}" for n, v in self.headers if n != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body (RFC 2046) into (headers, body) parts."""
    delimiter = b"--" + boundary.encode()
    parts: list[tuple[dict[str, str], bytes]] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n").removeprefix(b"\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = chunk.partition(b"\n\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[_canonical(name.strip())] = value.strip()
        # the line break before a delimiter belongs to the delimiter (RFC 2046 section 5.1.1)
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        parts.append((headers, content))
    return parts


class StreamFramer:
    """Cuts SIP messages out of a TCP byte stream by their Content-Length (RFC 3261 section 18.3)."""

    def __init__(self, *, strict: bool = False) -> None:
        self._buffer = bytearray()
        self._strict = strict

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every whole message now complete.

        A message announcing more than 64 KiB is dropped with what is buffered; with ``strict`` it raises
        ``ParseError`` instead (a live connection is then closed: it cannot be trusted).
        """
        self._buffer += data
        out: list[bytes] = []
        while True:
            # keep-alive CRLFs between messages (RFC 5626) are skipped
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_MESSAGE_BYTES:
                    self._buffer.clear()
                return out
            head = bytes(self._buffer[:end]).decode("utf-8", "replace")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if _canonical(name.strip()) == "content-length":
                    value = value.strip()
                    length = int(value) if (value.isascii() and value.isdigit()) else 0
            if end + 4 + length > MAX_MESSAGE_BYTES:
                self._buffer.clear()
                if self._strict:
                    raise ParseError("SIP message on the stream is larger than 64 KiB")
                return out
            total = end + 4 + length
            if len(self._buffer) < total:
                return out
            out.append(bytes(self._buffer[:total]))
            del self._buffer[:total]


def _canonical(name: str) -> str:
    lower = name.lower()
    return COMPACT_FORMS.get(lower, lower)


def _display(name: str) -> str:
    special = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate"}
    return special.get(name, "-".join(p.capitalize() for p in name.split("-")))


def _tag(value: str | None) -> str | None:
    if value is None:
        return None
    m = _TAG.search(value)
    return m.group(1) if m else None


def uri_user(value: str | None) -> str:
    """The user part of the URI in a From/To header value (the number), or ''."""
    if not value:
        return ""
    m = re.search(r"<?(?:sips?|tel):([^@;>]+)", value)
    return m.group(1) if m else ""


def display_name(value: str | None) -> str:
    """The display name of a From/To header value, or ''."""
    if not value:
        return ""
    before = value.split("<")[0].strip()
    return before.strip('"') if "<" in value else ""


def make_response(
    request: SipMessage,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    received: tuple[str, int] | None = None,
) -> SipMessage:
    """A response to ``request`` (RFC 3261 section 8.2.6): its Via, From, Call-ID, CSeq; To with our tag.

    ``received`` is where the request came from: it fills the top Via's ``received``/``rport``
    (RFC 3581) so the response finds its way back through NAT.
    """
    reason = " ".join(reason.split())  # a reason phrase is one line
    response = SipMessage(status=status, reason=reason)
    for i, via in enumerate(request.header_all("via")):
        if i == 0 and received is not None:
            via = _via_received(via, received)
        response.headers.append(("via", via))
    to = request.header("to") or ""
    if to_tag and status > 100 and _tag(to) is None:
        to = f"{to};tag={to_tag}"
    for name, value in (("from", request.header("from")), ("to", to), ("call-id", request.call_id)):
        response.headers.append((name, value or ""))
    response.headers.append(("cseq", request.header("cseq") or ""))
    return response


def _via_received(via: str, source: tuple[str, int]) -> str:
    head, *params = via.split(";")
    out = [head]
    for param in params:
        name = param.strip().split("=")[0].lower()
        if name == "rport":
            param = f"rport={source[1]}"
        elif name == "received":
            continue
        out.append(param.strip())
    sent_by = head.split()[-1] if head.split() else ""
    host = sent_by.rsplit(":", 1)[0] if sent_by.count(":") == 1 else sent_by
    if host.strip("[]") != source[0] or any(p.startswith("rport=") for p in out):
        out.insert(1, f"received={source[0]}")
    return ";".join(out)
