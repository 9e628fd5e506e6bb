"""Wire formats: RTP, SDP, SIP — round trips, exact error sentences, and no crash on random input."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callrec.errors import ParseError
from callrec.media.seq import unwrap_seq, unwrap_ts
from callrec.models import RtpMap
from callrec.wire.dialogs import DialogTracker
from callrec.wire.rtp import RtpPacket, is_rtcp, payload_offset
from callrec.wire.sdp import Sdp
from callrec.wire.sip import SipMessage, StreamFramer, split_multipart
from tests.support import synth


# RTP
def test_rtp_round_trip_with_csrc_extension_and_padding() -> None:
    pkt = RtpPacket(
        payload_type=8,
        sequence_number=65535,
        timestamp=0xFFFFFFF0,
        ssrc=0xDEADBEEF,
        marker=True,
        csrc=[1, 2],
        extension=(0xBEDE, b"\x10\xff\x00\x00"),
        payload=b"\xd5" * 160,
        padding=4,
    )
    data = pkt.serialize()
    assert RtpPacket.parse(data) == pkt
    start, end = payload_offset(data)
    assert data[start:end] == b"\xd5" * 160


@pytest.mark.parametrize(
    ("data", "sentence"),
    [
        (b"\x80\x08", "RTP packet length is less than 12 bytes"),
        (b"\x40" + bytes(11), "RTP packet has an invalid version"),
        (b"\x83" + bytes(11), "RTP packet is shorter than its CSRC list"),
        (b"\x90" + bytes(11), "RTP packet is shorter than its header extension"),
        (b"\xa0" + bytes(11) + b"\x00\x09", "RTP packet padding is longer than its payload"),
    ],
)
def test_rtp_errors(data: bytes, sentence: str) -> None:
    with pytest.raises(ParseError, match=f"^{re.escape(sentence)}$"):
        RtpPacket.parse(data)


def test_rtcp_is_told_apart() -> None:
    assert is_rtcp(b"\x80\xc8" + bytes(26))  # sender report
    assert not is_rtcp(RtpPacket(8, 1, 1, 1, payload=b"x").serialize())


@given(st.binary(max_size=64))
def test_rtp_parse_raises_only_parse_error(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        RtpPacket.parse(data)


# wrap-around
def test_unwrap() -> None:
    assert unwrap_seq(0, 65535) == 65536
    assert unwrap_seq(65535, 65536) == 65535
    assert unwrap_seq(3, 10) == 3
    assert unwrap_ts(5, (1 << 32) - 5) == (1 << 32) + 5
    assert unwrap_ts((1 << 32) - 5, 1 << 32) == (1 << 32) - 5


# SDP
def test_sdp_media_addresses_codecs_and_attributes() -> None:
    body = synth.sdp("10.1.2.3", 4000, ["PCMA", "G722"], {96: "PCMU"}).replace(
        b"a=sendrecv", b"a=recvonly\r\na=label:1"
    )
    sdp = Sdp.parse(body)
    [audio] = sdp.media
    assert (audio.address, audio.port, audio.direction, audio.label) == ("10.1.2.3", 4000, "recvonly", "1")
    assert audio.formats == [96, 8, 9, 101, 13]
    assert audio.codec(96) == RtpMap("PCMU", 8000)
    assert audio.codec(13) == RtpMap("CN", 8000)  # static, no rtpmap line
    assert audio.codec(101) == RtpMap("telephone-event", 8000, 1, {"0-16": ""})
    assert audio.codec(120) is None


@pytest.mark.parametrize(
    ("body", "sentence"),
    [
        ("o=- 1 1 IN IP4 1.2.3.4\r\n", "SDP body has no v= line"),
        ("v=0\r\nc=IN IP4\r\n", "SDP connection line is not 'IN IP4|IP6 address'"),
        ("v=0\r\nm=audio\r\n", "SDP media line has fewer than three fields"),
        ("v=0\r\nm=audio port RTP/AVP 0\r\n", "SDP media line has an invalid port"),
        (
            "v=0\r\nm=audio 4 RTP/AVP 0\r\na=rtpmap:x PCMU\r\n",
            "SDP rtpmap attribute is not 'PT encoding/rate[/channels]'",
        ),
    ],
)
def test_sdp_errors(body: str, sentence: str) -> None:
    with pytest.raises(ParseError, match=f"^{re.escape(sentence)}$"):
        Sdp.parse(body)


@pytest.mark.slow
@settings(max_examples=300)
@given(st.text(max_size=400))
def test_sdp_parse_raises_only_parse_error(text: str) -> None:
    with contextlib.suppress(ParseError):
        Sdp.parse("v=0\r\n" + text)


# SIP
INVITE = synth.sip("INVITE sip:200@10.0.0.2 SIP/2.0", "abc@host", "1 INVITE", synth.sdp("10.0.0.1", 20000, ["PCMA"]))


def test_sip_parse_and_serialize() -> None:
    msg = SipMessage.parse(INVITE)
    assert msg.method == "INVITE" and msg.uri == "sip:200@10.0.0.2"
    assert msg.call_id == "abc@host" and msg.cseq == (1, "INVITE") and msg.from_tag == "abc"
    assert msg.to_tag is None
    assert Sdp.parse(msg.sdp_body() or b"").media[0].port == 20000
    again = SipMessage.parse(msg.serialize())
    assert again == msg


def test_sip_compact_headers_and_folding() -> None:
    data = b"SIP/2.0 200 OK\r\ni: x@y\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\n ;tag=2\r\nCSeq: 5 BYE\r\nl: 0\r\n\r\n"
    msg = SipMessage.parse(data)
    assert (msg.status, msg.reason, msg.call_id, msg.to_tag, msg.cseq) == (200, "OK", "x@y", "2", (5, "BYE"))


def test_sip_multipart_siprec_body() -> None:
    sdp = synth.sdp("10.0.0.9", 7000, ["PCMA"])
    meta = b"<?xml version='1.0'?><recording xmlns='urn:ietf:params:xml:ns:recording:1'/>"
    body = (
        b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + sdp + b"\r\n--b1\r\n"
        b"Content-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n"
        + meta
        + b"\r\n--b1--\r\n"
    )
    head = (
        b"INVITE sip:srs@10.0.0.9 SIP/2.0\r\nCall-ID: r@1\r\nCSeq: 1 INVITE\r\nRequire: siprec\r\n"
        b'Content-Type: multipart/mixed;boundary="b1"\r\nContent-Length: %d\r\n\r\n' % len(body)
    )
    msg = SipMessage.parse(head + body)
    assert msg.sdp_body() == sdp
    assert msg.body_part("application/rs-metadata+xml") == meta
    assert len(split_multipart(body, "b1")) == 2


@pytest.mark.parametrize(
    ("data", "sentence"),
    [
        (b"INVITE sip:a SIP/2.0\r\nCall-ID: x", "SIP message has no blank line after its headers"),
        (b"HELLO\r\n\r\n", "SIP start line is neither a request nor a status line"),
        (b"BYE sip:a SIP/2.0\r\nno colon here\r\n\r\n", "SIP header line has no colon"),
        (b"BYE sip:a SIP/2.0\r\nContent-Length: ten\r\n\r\n", "SIP Content-Length is not a number"),
        (
            b"BYE sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nabc",
            "SIP body is shorter than its Content-Length",
        ),
    ],
)
def test_sip_errors(data: bytes, sentence: str) -> None:
    with pytest.raises(ParseError, match=f"^{re.escape(sentence)}$"):
        SipMessage.parse(data)


def test_tcp_framing_by_content_length() -> None:
    framer = StreamFramer()
    stream = INVITE + b"\r\n" + INVITE
    got: list[bytes] = []
    for i in range(0, len(stream), 7):
        got += framer.feed(stream[i : i + 7])
    assert got == [INVITE, INVITE]


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_sip_parse_and_tracker_never_crash(data: bytes) -> None:
    tracker = DialogTracker()
    tracker.feed(0.0, data)
    tracker.feed(0.0, INVITE[:60] + data)
    with contextlib.suppress(ParseError):
        SipMessage.parse(data)


def test_dialog_parties_and_media_direction() -> None:
    tracker = DialogTracker()
    tracker.feed(0.0, INVITE)
    answer = synth.sip("SIP/2.0 200 OK", "abc@host", "1 INVITE", synth.sdp("10.0.0.2", 30000, ["PCMA"]), "xyz")
    tracker.feed(0.1, answer)
    import socket

    a_receives = (socket.inet_aton("10.0.0.1"), 20000)
    b_receives = (socket.inet_aton("10.0.0.2"), 30000)
    assert tracker.bindings[a_receives].stream.party == "B"  # what arrives at the caller was sent by the callee
    assert tracker.bindings[b_receives].stream.party == "A"
    info = tracker.dialogs["abc@host"].info
    assert [(p.id, p.role, p.number, p.name) for p in info.parties] == [
        ("A", "caller", "100", "Alice"),
        ("B", "callee", "200", ""),
    ]
    # a re-INVITE from the callee moves the callee's media
    reinvite = (
        synth.sip(
            "INVITE sip:100@10.0.0.1 SIP/2.0",
            "abc@host",
            "7 INVITE",
            synth.sdp("10.0.0.2", 31000, ["PCMA"]),
            "xyz",
        )
        .replace(b'From: "Alice" <sip:100@10.0.0.1>;tag=abc', b"From: <sip:200@10.0.0.2>;tag=xyz")
        .replace(b"To: <sip:200@10.0.0.2>;tag=xyz", b"To: <sip:100@10.0.0.1>;tag=abc")
    )
    tracker.feed(5.0, reinvite)
    assert tracker.bindings[(socket.inet_aton("10.0.0.2"), 31000)].stream.party == "A"


def test_non_ascii_digits_are_not_numbers() -> None:
    # str.isdigit() accepts "¹" and "²", which int() refuses: each must be a ParseError, never a crash
    assert Sdp.parse("v=0\nm=audio 4000 RTP/AVP 0 \u00b9\n").media[0].formats == [0]
    with pytest.raises(ParseError, match="SDP media line has an invalid port"):
        Sdp.parse("v=0\nm=audio \u00b2000 RTP/AVP 0\n")
    with pytest.raises(ParseError, match="SIP Content-Length is not a number"):
        SipMessage.parse("OPTIONS sip:x SIP/2.0\r\nContent-Length: \u00b2\r\n\r\n".encode())
    with pytest.raises(ParseError, match="SIP CSeq header is not 'number METHOD'"):
        _ = SipMessage.parse(b"OPTIONS sip:x SIP/2.0\r\nCSeq: \xc2\xb9 OPTIONS\r\n\r\n").cseq
