"""A synthetic call made SRTP: its SDP offers RTP/SAVP with SDES ``a=crypto`` and its RTP is protected by
libsrtp (pylibsrtp), each party with the key its own SDP announced (RFC 4568)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from pylibsrtp import Policy, Session

from callrec.files import tape
from callrec.media.srtp_keys import seal_keys
from callrec.models import CallInfo, Party, RtpMap, Stream
from callrec.secretbox import SecretBox
from callrec.wire.sdes import CryptoAttribute, KeyParam
from tests.support import synth

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
KEY_LENGTHS = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30, "AEAD_AES_128_GCM": 28,
               "AEAD_AES_256_GCM": 44}  # fmt: skip
IPS = {synth.A_IP: "A", synth.B_IP: "B"}
Datagram = tuple[float, str, int, str, int, bytes]


def crypto_line(suite: str, key: bytes, tag: int = 1) -> str:
    return f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}"


def sender(suite: str, key: bytes) -> Session:
    """A libsrtp session protecting what one party sends (any SSRC) with ``key`` (master key || salt)."""
    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILES[suite]))


def make_srtp(
    datagrams: list[Datagram],
    suite: str,
    media_keys: dict[str, bytes],
    sdp_keys: dict[str, bytes | None] | None = None,
) -> list[Datagram]:
    """``datagrams`` (synth.build's) with each party's SDP made RTP/SAVP carrying ``sdp_keys[party]`` (default
    ``media_keys``; None: no a=crypto line) and each party's RTP protected with ``media_keys[party]``."""
    sdp_keys = dict(media_keys) if sdp_keys is None else sdp_keys
    senders = {party: sender(suite, key) for party, key in media_keys.items()}
    protected: dict[bytes, bytes] = {}
    # protect each packet once, in sequence order (a duplicate on the wire is the same SRTP packet twice)
    rtp = [d for d in datagrams if d[2] not in (5060,)]
    for _, src, _, _, _, payload in sorted(rtp, key=lambda d: (d[1], d[5][8:12], d[5][2:4])):
        if payload not in protected:
            protected[payload] = senders[IPS[src]].protect(payload)
    out: list[Datagram] = []
    for ts, src, sport, dst, dport, payload in datagrams:
        sent = savp(payload, suite, sdp_keys.get(IPS[src])) if sport == 5060 else protected[payload]
        out.append((ts, src, sport, dst, dport, sent))
    return out


def savp(message: bytes, suite: str, key: bytes | None) -> bytes:
    """A SIP message whose SDP offers RTP/SAVP with ``key`` in an a=crypto line (None: none)."""
    head, sep, body = message.partition(b"\r\n\r\n")
    if b"m=audio" not in body:
        return message
    body = body.replace(b" RTP/AVP ", b" RTP/SAVP ")
    if key is not None:
        body += (crypto_line(suite, key) + "\r\n").encode()
    head = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(body), head)
    return head + sep + body


def srtp_tape(
    folder: Path,
    built: synth.Built,
    suite: str,
    keys: dict[str, bytes],
    box: SecretBox | None,
    sealed: dict[str, bytes] | None = None,
    call_id: str = "srtp-tape@test",
) -> Path:
    """A tape as the SIPREC recorder leaves it for an SDES-SRTP call (synth's default ports): the media as
    received, protected with ``keys``, and ``sealed`` (default ``keys``) sealed with ``box`` in call.json
    (stream 0 is A's, 1 is B's); ``box`` None: the plain-RTP tape of the same call."""
    folder.mkdir(parents=True)
    pcma = {8: RtpMap("PCMA", 8000)}
    info = CallInfo(
        call_ids=[call_id],
        parties=[Party("A", "caller"), Party("B", "callee")],
        streams=[
            Stream("A", synth.B_IP, 30000, synth.A_IP, 20000, "1", dict(pcma)),
            Stream("B", synth.A_IP, 20000, synth.B_IP, 30000, "2", dict(pcma)),
        ],
        started_at=built.t0,
        source="siprec",
    )
    media = built.media
    if box is not None:
        media = make_srtp(media, suite, keys)
        sealed = keys if sealed is None else sealed
        info.srtp = seal_keys(box, [(0, CryptoAttribute(1, suite, (KeyParam(sealed["A"]),))),
                                    (1, CryptoAttribute(2, suite, (KeyParam(sealed["B"]),)))])  # fmt: skip
    writer = tape.TapeWriter(folder, info)
    for ts, src, sport, dst, dport, payload in media:
        writer.write(ts, (src, sport), (dst, dport), payload)
    writer.close(ended_at=built.t0 + built.duration, cleanly=True)
    return folder
