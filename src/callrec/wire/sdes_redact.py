"""SDES keys out of SIP kept on a tape: each ``a=crypto`` key replaced by a run of ``*`` of its length.

A passive capture writes each call's SIP as it came, but an SDP ``a=crypto`` line carries an SRTP key in
clear: the tape keeps the message with every ``inline:`` key text (the base64 up to ``|``, ``;`` or the
line's end) replaced by as many ``*`` (never base64, so never a key; the same length, so the message, its
``Content-Length`` and its datagram stay as they were otherwise). The keys themselves go to ``call.json``
sealed (``media/srtp_keys.seal_sdp_keys``), named by the sending party, the ``m=`` line and the tag; the
mixer meets the placeholders (``redacted_tags``) and takes the sealed keys in their place.
"""

from __future__ import annotations

import re

PLACEHOLDER = b"*"
# an a=crypto line (the SDP parser strips the whitespace around lines; so does this), any case
_CRYPTO_LINE = re.compile(rb"(?im)^[ \t]*a=crypto:[^\r\n]*")
_INLINE_KEY = re.compile(rb"(?i)(inline:)([^|;\s]+)")
_REDACTED = re.compile(r"(?i)inline:\*+(?=[|;\s]|$)")


def redact_crypto(message: bytes) -> bytes:
    """``message`` with every ``a=crypto`` key text replaced by ``*`` of the same length (the same object
    when it holds none)."""
    if b"rypto:" not in message and b"RYPTO:" not in message:
        return message
    return _CRYPTO_LINE.sub(_redact_line, message)


def _redact_line(line: re.Match[bytes]) -> bytes:
    return _INLINE_KEY.sub(lambda m: m.group(1) + PLACEHOLDER * len(m.group(2)), line.group(0))


def redacted_tags(sdp: str | bytes) -> list[list[int]]:
    """For each ``m=`` section (in the order of ``sdes.crypto_by_media``), the tags of its ``a=crypto`` lines
    whose key was replaced by ``redact_crypto``."""
    if isinstance(sdp, bytes):
        sdp = sdp.decode("utf-8", "replace")
    sections: list[list[int]] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            sections.append([])
        elif line.startswith("a=crypto:") and sections and _REDACTED.search(line):
            tag = line[len("a=crypto:") :].split(maxsplit=1)[:1]
            if tag and tag[0].isascii() and tag[0].isdigit() and len(tag[0]) <= 9:
                sections[-1].append(int(tag[0]))
    return sections
