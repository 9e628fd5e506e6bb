"""Acceptance 2: broken SIP and SDP get a 400 naming the problem or are dropped, and the recorder never dies;
stray datagrams on RTP ports never damage a tape.

Each broken message is sent to a running recorder; afterwards the recorder must still answer OPTIONS and
record a good SIPREC call. ``stats.sip_errors`` (messages whose handling raised) must stay 0.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callrec.files import tape
from callrec.files.pcap import CaptureReader
from callrec.wire.sip import SipMessage
from tests.recorder.test_recorder_policy import packets_on_tape
from tests.support.recorder_proc import RecorderProcess, free_udp_block
from tests.support.sipclient import (
    METADATA,
    Dialog,
    RecorderThread,
    RtpSender,
    SipClient,
    answered_ports,
    info_of,
    recorder_config,
    siprec_sdp,
    tapes,
    wait_for,
)

pytestmark = pytest.mark.slow  # a live recorder per case, a real recorder process (over a second each)

QUIET_S = 0.3  # how long "no answer" is waited for


# ---- the corpus ------------------------------------------------------------------------------------------
def good_invite(sip: SipClient, **kwargs: object) -> bytes:
    return Dialog(sip).invite(send=False, **kwargs).serialize()  # type: ignore[arg-type]


def head_and_body(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def without_header(raw: bytes, name: bytes) -> bytes:
    head, body = head_and_body(raw)
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(name.lower() + b":")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def replace_header(raw: bytes, name: bytes, value: bytes) -> bytes:
    head, body = head_and_body(raw)
    lines = [
        name + b": " + value if line.lower().startswith(name.lower() + b":") else line for line in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def edit_body(raw: bytes, old: bytes, new: bytes) -> bytes:
    """Replace ``old`` in the body, keeping Content-Length right."""
    head, body = head_and_body(raw)
    body = body.replace(old, new, 1)
    return replace_header(head + b"\r\n\r\n" + body, b"Content-Length", str(len(body)).encode())


def with_sdp(sip: SipClient, sdp: str) -> bytes:
    return good_invite(sip, sdp=sdp)


def with_content_type(raw: bytes, value: bytes) -> bytes:
    return replace_header(raw, b"Content-Type", value)


GOOD_SDP = siprec_sdp([41000, 41002])
Build = Callable[[SipClient], bytes]


@dataclass(frozen=True)
class Case:
    """A broken message and what the recorder must do with it: answer ``status reason`` or nothing."""

    build: Build
    status: int | None = None
    reason: str = ""


def bad_request(sentence: str) -> tuple[int, str]:
    return 400, f"Bad Request: {sentence}"


def case(build: Build, answer: tuple[int, str] | None = None) -> Case:
    return Case(build) if answer is None else Case(build, *answer)


CORPUS: dict[str, Case] = {
    "no-blank-line": case(
        lambda s: head_and_body(good_invite(s))[0] + b"\r\n",
        bad_request("SIP message has no blank line after its headers"),
    ),
    "start-line-other-version": case(lambda s: good_invite(s).replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1)),
    "start-line-garbage": case(lambda s: b"HELLO THERE\r\n" + good_invite(s).split(b"\r\n", 1)[1]),
    "start-line-no-uri": case(lambda s: good_invite(s).replace(b"INVITE sip:", b"INVITE  sip:", 1)),
    "header-without-colon": case(
        lambda s: good_invite(s).replace(b"Max-Forwards: 70", b"Max-Forwards 70", 1),
        bad_request("SIP header line has no colon"),
    ),
    "content-length-longer-than-body": case(
        lambda s: replace_header(
            good_invite(s), b"Content-Length", str(len(head_and_body(good_invite(s))[1]) + 100).encode()
        ),
        bad_request("SIP body is shorter than its Content-Length"),
    ),
    "content-length-not-a-number": case(
        lambda s: replace_header(good_invite(s), b"Content-Length", b"ten"),
        bad_request("SIP Content-Length is not a number"),
    ),
    "content-length-negative": case(
        lambda s: replace_header(good_invite(s), b"Content-Length", b"-5"),
        bad_request("SIP Content-Length is not a number"),
    ),
    "no-call-id": case(
        lambda s: without_header(good_invite(s), b"Call-ID"), bad_request("SIP request has no Call-ID header")
    ),
    "no-from": case(lambda s: without_header(good_invite(s), b"From"), bad_request("SIP request has no From header")),
    "no-to": case(lambda s: without_header(good_invite(s), b"To"), bad_request("SIP request has no To header")),
    # without Via or CSeq an answer could not be matched to its request: nobody to tell
    "no-via": case(lambda s: without_header(good_invite(s), b"Via")),
    "no-cseq": case(lambda s: without_header(good_invite(s), b"CSeq")),
    "cseq-not-a-number": case(lambda s: replace_header(good_invite(s), b"CSeq", b"one INVITE")),
    "cseq-method-mismatch": case(
        lambda s: replace_header(good_invite(s), b"CSeq", b"1 BYE"),
        bad_request("SIP CSeq method does not match the request method"),
    ),
    "cseq-too-large": case(
        lambda s: replace_header(good_invite(s), b"CSeq", b"4294967296 INVITE"),
        bad_request("SIP CSeq header is not 'number METHOD'"),
    ),
    "from-unclosed-angle": case(
        lambda s: replace_header(good_invite(s), b"From", b"<sip:src@192.0.2.1;tag=1"),
        bad_request("SIP From header has an unclosed '<'"),
    ),
    "sdp-no-version": case(
        lambda s: with_sdp(s, GOOD_SDP.replace("v=0\r\n", "")), bad_request("SDP body has no v= line")
    ),
    "sdp-bad-media-port": case(
        lambda s: with_sdp(s, GOOD_SDP.replace("m=audio 41000", "m=audio 99999")),
        bad_request("SDP media line has an invalid port"),
    ),
    "sdp-media-port-not-a-number": case(
        lambda s: with_sdp(s, GOOD_SDP.replace("m=audio 41000", "m=audio forty")),
        bad_request("SDP media line has an invalid port"),
    ),
    "sdp-short-media-line": case(
        lambda s: with_sdp(s, GOOD_SDP.replace("m=audio 41000 RTP/AVP 8", "m=audio")),
        bad_request("SDP media line has fewer than three fields"),
    ),
    "sdp-bad-connection": case(
        lambda s: with_sdp(s, GOOD_SDP.replace("c=IN IP4 127.0.0.1", "c=IN IP4")),
        bad_request("SDP connection line is not 'IN IP4|IP6 address'"),
    ),
    "sdp-connection-other-network": case(
        lambda s: with_sdp(s, GOOD_SDP.replace("c=IN IP4 127.0.0.1", "c=ATM NSAP 47.0005")),
        bad_request("SDP connection line is not 'IN IP4|IP6 address'"),
    ),
    "sdp-bad-rtpmap": case(
        lambda s: with_sdp(s, GOOD_SDP.replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:8 PCMA", 1)),
        bad_request("SDP rtpmap attribute is not 'PT encoding/rate[/channels]'"),
    ),
    "sdp-no-audio": case(
        lambda s: with_sdp(s, GOOD_SDP.replace("m=audio", "m=video")),
        (488, "Not Acceptable Here: no recordable RTP/AVP audio stream"),
    ),
    "sdp-missing": case(
        lambda s: good_invite(s, sdp="", metadata=METADATA), (488, "Not Acceptable Here: the INVITE has no SDP offer")
    ),
    "multipart-no-boundary": case(
        lambda s: with_content_type(good_invite(s), b"multipart/mixed"),
        bad_request("SIP multipart body has no boundary parameter"),
    ),
    "multipart-wrong-boundary": case(
        lambda s: with_content_type(good_invite(s), b"multipart/mixed;boundary=elsewhere"),
        bad_request("SIP multipart body has no part with its boundary"),
    ),
    "multipart-part-without-blank-line": case(
        lambda s: edit_body(
            good_invite(s), b"Content-Type: application/sdp\r\n\r\n", b"Content-Type: application/sdp\r\n"
        ),
        bad_request("SIP multipart body part has no blank line after its headers"),
    ),
    "binary-garbage": case(lambda s: random.Random(1).randbytes(1200)),
    "binary-garbage-with-blank-line": case(lambda s: random.Random(2).randbytes(300) + b"\r\n\r\n"),
    "huge-garbage": case(lambda s: random.Random(3).randbytes(60_000)),
    "huge-header": case(
        lambda s: good_invite(s).replace(b"Max-Forwards: 70", b"X-Pad: " + b"a" * 60_000 + b"\r\nMax-Forwards 70", 1),
        bad_request("SIP header line has no colon"),
    ),
    "nul-in-header": case(
        lambda s: good_invite(s).replace(b"Max-Forwards: 70", b"Max-Forwards: 7\x000", 1),
        bad_request("SIP header has a control character"),
    ),
    "nul-in-call-id": case(
        lambda s: replace_header(good_invite(s), b"Call-ID", b"abc\x00def@src"),
        bad_request("SIP header has a control character"),
    ),
    "nul-in-uri": case(
        lambda s: good_invite(s).replace(b"INVITE sip:srs@", b"INVITE sip:s\x00rs@", 1),
        bad_request("SIP request URI has a control character"),
    ),
    "nul-bytes-only": case(lambda s: b"\x00" * 500),
    "invalid-utf8-in-header": case(
        lambda s: good_invite(s).replace(b"<sip:src@", b"\xff\xfe <sip:src@", 1),
        bad_request("SIP header is not valid UTF-8"),
    ),
    "invalid-utf8-start-line": case(
        lambda s: b"INV\xffITE sip:srs@x SIP/2.0\r\n" + good_invite(s).split(b"\r\n", 1)[1]
    ),
    "a-response": case(lambda s: b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nCSeq: 1 BYE\r\n\r\n"),
    "only-crlf": case(lambda s: b"\r\n\r\n"),
    "empty": case(lambda s: b""),
    "ack-garbage": case(lambda s: b"ACK sip:x SIP/2.0\r\nVia: broken\r\n"),
}


def fallback_metadata_cases() -> dict[str, str]:
    """Broken rs-metadata: the call is still recorded, its parties unnamed."""
    return {
        "metadata-not-xml": "<recording><participant",
        "metadata-wrong-root": "<?xml version='1.0'?><notrecording/>",
        "metadata-dtd": "<?xml version='1.0'?><!DOCTYPE r [<!ENTITY x 'y'>]><recording>&x;</recording>",
        "metadata-binary": "\x00\x01\x02",
    }


# ---- checks ---------------------------------------------------------------------------------------------
def still_records(rec: RecorderThread, sip: SipClient) -> Path:
    """OPTIONS gets 200 and a good SIPREC call records; returns its tape."""
    assert sip.options().status == 200
    dialog = Dialog(sip)
    port = answered_ports(dialog.call())[0]
    rtp = RtpSender(port)
    rtp.send(5)
    wait_for(lambda: rec.call(lambda: rec.recorder.sessions[dialog.call_id].tape.packets) == 5, what="5 packets")  # type: ignore[union-attr]
    assert dialog.bye().status == 200
    folder = rec.closed_tape_of(dialog.call_id)
    assert packets_on_tape(folder) == {port: 5}
    return folder


def answers_to(sip: SipClient, raw: bytes) -> list[SipMessage]:
    """Send ``raw`` and collect the responses (all must parse); an INVITE's 200 OK is ACKed and BYEd."""
    sip.send(raw)
    return sip.responses_within(QUIET_S)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_broken_message_gets_its_answer_and_the_recorder_goes_on(name: str, rec: RecorderThread) -> None:
    broken = CORPUS[name]
    with SipClient(rec.address) as sip:
        raw = broken.build(sip)
        answers = [a for a in answers_to(sip, raw) if a.status != 100]
        if broken.status is None:
            assert answers == []
        else:
            assert [(a.status, a.reason) for a in answers] == [(broken.status, broken.reason)]
            assert answers[0].to_tag
        assert rec.session_count() == 0
        still_records(rec, sip)
    assert len(tapes(rec.cfg.data_dir)) == 1


@pytest.mark.parametrize("name", sorted(fallback_metadata_cases()))
def test_broken_metadata_still_records_with_fallback_parties(name: str, rec: RecorderThread) -> None:
    metadata = fallback_metadata_cases()[name]
    with SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        ok = dialog.call(metadata=metadata)
        ports = answered_ports(ok)
        for port in ports:
            RtpSender(port).send(3)
        wait_for(lambda: rec.call(lambda: rec.recorder.sessions[dialog.call_id].tape.packets) == 6, what="packets")  # type: ignore[union-attr]
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    info = info_of(folder)
    assert [(p.id, p.role, p.name) for p in info.parties] == [("A", "caller", ""), ("B", "callee", "")]
    assert [s.party for s in info.streams] == ["A", "B"]
    assert packets_on_tape(folder) == {ports[0]: 3, ports[1]: 3}


def test_a_400_leaves_out_what_the_request_lacked(rec: RecorderThread) -> None:
    with SipClient(rec.address) as sip:
        raw = without_header(good_invite(sip), b"Call-ID")
        (answer,) = answers_to(sip, raw)
    assert answer.status == 400
    assert answer.header("call-id") is None
    assert answer.header("cseq") == "1 INVITE"
    assert "branch=" in (answer.header("via") or "")


def test_a_400_does_not_echo_a_header_with_a_nul(rec: RecorderThread) -> None:
    with SipClient(rec.address) as sip:
        (answer,) = answers_to(sip, replace_header(good_invite(sip), b"Call-ID", b"abc\x00def@src"))
    assert answer.status == 400
    assert answer.header("call-id") is None
    assert b"\x00" not in answer.serialize()


def test_bad_sdp_in_a_reinvite_gets_400_and_the_call_goes_on(rec: RecorderThread) -> None:
    with SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        port = answered_ports(dialog.call())[0]
        refused = dialog.reinvite(GOOD_SDP.replace("v=0\r\n", ""))
        assert (refused.status, refused.reason) == (400, "Bad Request: SDP body has no v= line")
        RtpSender(port).send(4)
        wait_for(lambda: rec.call(lambda: rec.recorder.sessions[dialog.call_id].tape.packets) == 4, what="packets")  # type: ignore[union-attr]
        assert dialog.bye().status == 200
        (folder,) = rec.wait_closed()
    assert packets_on_tape(folder) == {port: 4}


# ---- TCP --------------------------------------------------------------------------------------------------
def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the other side closed the connection (reading what it still sends)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_tcp_huge_content_length_closes_the_connection(rec: RecorderThread) -> None:
    with SipClient(rec.address, "tcp") as sip:
        sip.send(replace_header(good_invite(sip), b"Content-Length", b"10000000"))
        assert closed_by_peer(sip.sock)
    with SipClient(rec.address, "tcp") as sip:
        still_records(rec, sip)


def test_tcp_garbage_without_a_message_closes_the_connection(rec: RecorderThread) -> None:
    with SipClient(rec.address, "tcp") as sip:
        sip.sock.sendall(random.Random(4).randbytes(70_000).replace(b"\r\n", b"xx"))
        assert closed_by_peer(sip.sock)
    with SipClient(rec.address, "tcp") as sip:
        still_records(rec, sip)


def test_tcp_non_numeric_content_length_gets_400_then_the_connection_closes(rec: RecorderThread) -> None:
    with SipClient(rec.address, "tcp") as sip:
        sip.send(replace_header(good_invite(sip), b"Content-Length", b"ten"))
        answer = sip.response()
        assert (answer.status, answer.reason) == bad_request("SIP Content-Length is not a number")
        assert closed_by_peer(sip.sock)
    with SipClient(rec.address, "tcp") as sip:
        still_records(rec, sip)


def test_tcp_corpus_on_one_connection_each(rec: RecorderThread) -> None:
    for name in sorted(CORPUS):
        with SipClient(rec.address, "tcp") as sip:
            raw = CORPUS[name].build(sip)
            if not raw.strip():
                continue
            try:
                sip.send(raw)
                sip.responses_within(0.05)
            except (ConnectionError, OSError):
                pass  # the recorder may close a connection that sent it junk
    assert rec.recorder.stats.sip_errors == 0
    with SipClient(rec.address, "tcp") as sip:
        still_records(rec, sip)


def test_tcp_byte_by_byte_is_reassembled(rec: RecorderThread) -> None:
    with SipClient(rec.address, "tcp") as sip:
        dialog = Dialog(sip)
        raw = dialog.invite(send=False).serialize()
        for i in range(len(raw)):
            sip.sock.sendall(raw[i : i + 1])
        ok = sip.response()
        assert ok.status == 200
        dialog.ack(ok)
        assert dialog.bye().status == 200


# ---- a real process ----------------------------------------------------------------------------------------
def test_corpus_against_a_real_process_which_still_records_and_stops_cleanly(data: Path) -> None:
    proc = RecorderProcess(data, "--log-level", "warning").start()
    try:
        with SipClient(proc.address) as sip:
            for name in sorted(CORPUS):
                sip.send(CORPUS[name].build(sip))
            for name in sorted(CORPUS):
                with SipClient(proc.address, "tcp") as tcp:
                    raw = CORPUS[name].build(tcp)
                    if raw.strip():
                        with contextlib.suppress(OSError):
                            tcp.send(raw)
            sip.responses_within(QUIET_S)
            assert proc.proc is not None and proc.proc.poll() is None
            assert sip.options().status == 200
            dialog = Dialog(sip)
            port = answered_ports(dialog.call())[0]
            RtpSender(port).send(5)
            assert dialog.bye().status == 200
            wait_for(lambda: tapes(data) and info_of(tapes(data)[0]).closed_cleanly, what="the tape closed")
            code = proc.stop(signal.SIGTERM)
    finally:
        proc.kill()
    err = proc.log()
    assert code == 0, err
    assert "Traceback" not in err
    assert "unexpected error" not in err
    (folder,) = tapes(data)
    assert info_of(folder).closed_cleanly
    assert packets_on_tape(folder) == {port: 5}


# ---- hypothesis: mutated INVITEs ------------------------------------------------------------------------------
@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """1 to 4 edits: flip a byte, drop a line, duplicate a line, cut the message, insert bytes."""
    kinds = st.sampled_from(["flip", "drop-line", "dup-line", "truncate", "insert"])
    return draw(st.lists(st.tuples(kinds, st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))


def mutate(raw: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(raw)
    for kind, where, value in edits:
        if not data:
            break
        i = where % len(data)
        if kind == "flip":
            data[i] = value
        elif kind == "truncate":
            del data[i:]
        elif kind == "insert":
            data[i:i] = bytes([value]) * (1 + value % 7)
        else:
            lines = bytes(data).split(b"\r\n")
            j = where % len(lines)
            if kind == "drop-line":
                del lines[j]
            else:
                lines.insert(j, lines[j])
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


KNOWN_STATUSES = {100, 200, 400, 403, 405, 420, 481, 482, 487, 488, 500, 503}


def test_mutated_invites_get_a_status_or_nothing_and_the_recorder_lives(data: Path) -> None:
    cfg = recorder_config(data)
    cfg.rtp_last = cfg.rtp_first + 400  # room for the sessions that mutations leave intact
    cfg.max_sessions_per_source = 1000  # they all come from one SRC and stay open
    seen: list[int] = []
    with RecorderThread(cfg) as rec, SipClient(rec.address) as sip:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(edits=mutations(), transport=st.sampled_from(["udp", "udp", "tcp"]))
        def check(edits: list[tuple[str, int, int]], transport: str) -> None:
            raw = mutate(good_invite(sip), edits)
            if transport == "udp":
                sip.send(raw)
                probe = sip
            else:
                probe = SipClient(rec.address, "tcp")
                with contextlib.suppress(OSError):
                    probe.send(raw)
            # every answer parses (recv parses); an OPTIONS behind it proves the recorder still listens
            options = Dialog(sip).request("OPTIONS")
            sip.send(options)
            while True:
                answer = sip.response(final=False)
                assert answer.status in KNOWN_STATUSES
                seen.append(answer.status or 0)
                if answer.call_id == options.call_id:
                    assert answer.status == 200
                    break
            if probe is not sip:
                try:
                    for late in probe.responses_within(0.02):
                        assert late.status in KNOWN_STATUSES
                except ConnectionError:
                    pass
                probe.close()

        check()
        assert rec.recorder.stats.sip_errors == 0
        still_records(rec, sip)
    assert 400 in seen and 200 in seen


# ---- stray datagrams on RTP ports ------------------------------------------------------------------------------
def rtp_shaped(datagram: bytes) -> bool:
    """What the recorder keeps: RTP/RTCP version 2 and at least 8 bytes; anything else is dropped."""
    return len(datagram) >= 8 and datagram[0] & 0xC0 == 0x80


def crafted_junk(rng: random.Random) -> list[bytes]:
    """Datagrams that are not the stream: other RTP versions, too short, very long, random."""
    junk = [b"", b"\x80", b"\x80" * 7, b"\x00" * 12, b"\xff" * 1400, b"\x80" * 1500]
    for version in (0, 1, 3):
        junk.append(struct.pack("!BBHII", version << 6, 8, 1, 160, 0xBAD) + b"\xd5" * 160)
    junk += [rng.randbytes(rng.randrange(1, 1500)) for _ in range(60)]
    return junk


def run_call_with_junk(rec: RecorderThread, junk: list[bytes], real: int, rng: random.Random) -> tuple[Path, int, int]:
    """A call whose first stream gets ``real`` RTP packets, with ``junk`` sent to every RTP/RTCP port between.

    Each datagram comes from the source the SRC's SDP advertised for the port it goes to (RTP on the
    offer's port, RTCP on the one above): from anywhere else it would be dropped as foreign whatever its
    shape (see test_recorder_isolation)."""
    dropped_before = rec.call(lambda: rec.recorder.streams.receiver.dropped)  # type: ignore[union-attr]
    base = free_udp_block(4, 20000, 60000)
    sources = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for i, sock in enumerate(sources):
            sock.bind(("127.0.0.1", base + i))
        with SipClient(rec.address) as sip:
            dialog = Dialog(sip)
            ports = answered_ports(dialog.call([base, base + 2]))
            rtp = RtpSender(ports[0], ssrc=0x5EED0001)
            rtp.sock.close()
            rtp.sock = sources[0]
            targets = [p + off for p in ports for off in (0, 1)]
            source_of = dict(zip(targets, sources, strict=True))
            queue = list(junk)
            rng.shuffle(queue)
            share = len(queue) // real + 1  # junk datagrams after each real packet
            for i in range(real):
                rtp.send(1, payload=bytes([0xD5 ^ (i & 0x7F)]) * 160)
                for _ in range(min(share, len(queue))):
                    target = rng.choice(targets)
                    source_of[target].sendto(queue.pop(), ("127.0.0.1", target))
            assert not queue
            expected = real + sum(1 for j in junk if rtp_shaped(j))
            wait_for(
                lambda: rec.call(lambda: rec.recorder.sessions[dialog.call_id].tape.packets) == expected,  # type: ignore[union-attr]
                what=f"{expected} packets on tape",
            )
            assert dialog.bye().status == 200
            folder = rec.closed_tape_of(dialog.call_id)
    finally:
        for sock in sources:
            sock.close()
    dropped = rec.call(lambda: rec.recorder.streams.receiver.dropped) - dropped_before  # type: ignore[union-attr]
    return folder, expected, dropped


def pcap_packets(folder: Path) -> list[bytes]:
    with CaptureReader(folder / tape.MEDIA_FILE) as reader:
        packets = [d.payload for d in reader]
        assert not reader.truncated and not reader.warnings
    return packets


def test_random_datagrams_on_rtp_ports_do_not_damage_the_tape(rec: RecorderThread, tmp_path: Path) -> None:
    rng = random.Random(7)
    junk = crafted_junk(rng)
    folder, expected, dropped = run_call_with_junk(rec, junk, real=100, rng=rng)
    assert dropped == sum(1 for j in junk if not rtp_shaped(j))
    packets = pcap_packets(folder)
    assert len(packets) == expected
    assert sum(1 for p in packets if p[:1] == b"\x80" and p[8:12] == b"\x5e\xed\x00\x01") == 100
    tshark = subprocess.run(["tshark", "-r", str(folder / tape.MEDIA_FILE), "-q"], capture_output=True, text=True)
    if tshark.returncode != 127:
        assert tshark.returncode == 0, tshark.stderr
    out = tmp_path / "mix.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "callrec.cli", "mix", str(folder), "-o", str(out), "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (result,) = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    real = [s for s in result["streams"] if s["ssrc"] in (0x5EED0001, "0x5eed0001", "5eed0001")]
    assert len(real) == 1, result["streams"]
    assert real[0]["packets"] == 100
    assert real[0]["party"] == "A"
    assert real[0]["lost"] == 0
    assert out.stat().st_size > 44


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(junk=st.lists(st.binary(min_size=0, max_size=400), min_size=1, max_size=40), seed=st.integers(0, 2**16))
def test_hypothesis_datagrams_are_kept_only_when_rtp_shaped(
    tmp_path_factory: pytest.TempPathFactory, junk: list[bytes], seed: int
) -> None:
    data = tmp_path_factory.mktemp("junk") / "data"
    with RecorderThread(recorder_config(data)) as rec:
        folder, expected, dropped = run_call_with_junk(rec, junk, real=20, rng=random.Random(seed))
        assert rec.recorder.stats.sip_errors == 0
    assert dropped == sum(1 for j in junk if not rtp_shaped(j))
    packets = pcap_packets(folder)
    assert len(packets) == expected
    assert sorted(p for p in packets if p[8:12] != b"\x5e\xed\x00\x01" or len(p) != 172) == sorted(
        j for j in junk if rtp_shaped(j) and (j[8:12] != b"\x5e\xed\x00\x01" or len(j) != 172)
    )


def test_a_datagram_too_long_to_receive_is_counted_as_dropped(rec: RecorderThread) -> None:
    with SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        port = answered_ports(dialog.call())[0]
        before = rec.call(lambda: rec.recorder.streams.receiver.received + rec.recorder.streams.receiver.dropped)  # type: ignore[union-attr]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
            stray.sendto(b"\x80" + random.Random(5).randbytes(64_999), ("127.0.0.1", port))
            stray.sendto(b"\x00" * 9000, ("127.0.0.1", port))
        assert dialog.bye().status == 200
        rec.wait_closed()
        after = rec.call(lambda: rec.recorder.streams.receiver.received + rec.recorder.streams.receiver.dropped)  # type: ignore[union-attr]
    assert after - before == 2


# ---- hypothesis: SDP and metadata ----------------------------------------------------------------------------
SDP_LINES = st.one_of(
    st.sampled_from(["v=0", "s=-", "t=0 0", "a=sendonly", "a=inactive", "a=label:1", "a=rtcp:9", "a=fmtp:8 x=1"]),
    st.builds(
        "m={} {} {} {}".format,
        st.sampled_from(["audio", "video", "", "audio audio"]),
        st.one_of(st.integers(-5, 70_000).map(str), st.sampled_from(["", "x", "4000/2", "0"])),
        st.sampled_from(["RTP/AVP", "RTP/AVPF", "RTP/SAVP", "udp", ""]),
        st.lists(st.one_of(st.integers(-1, 300).map(str), st.text(max_size=3)), max_size=4).map(" ".join),
    ),
    st.builds("c=IN {} {}".format, st.sampled_from(["IP4", "IP6", "IPX", ""]), st.text(max_size=20)),
    st.builds("a=rtpmap:{} {}".format, st.text(max_size=4), st.text(max_size=20)),
    st.text(max_size=30).map(lambda t: t.replace("\r", "").replace("\n", "")),
)


def test_fuzzed_sdp_is_recorded_or_refused_with_a_reason(data: Path) -> None:
    cfg = recorder_config(data)
    cfg.rtp_last = cfg.rtp_first + 400
    statuses: set[int] = set()
    # 200 calls on 200 pairs: a closed session's pair must not rest here (the rest is tested on its own)
    with RecorderThread(cfg, port_rest_s=0) as rec, SipClient(rec.address) as sip:

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(edits=st.lists(st.tuples(st.integers(0, 20), st.booleans(), SDP_LINES), max_size=4))
        def check(edits: list[tuple[int, bool, str]]) -> None:
            # a good offer with a few lines replaced or inserted
            lines = GOOD_SDP.splitlines()
            for where, replace, line in edits:
                i = where % len(lines)
                lines[i : i + int(replace)] = [line]
            dialog = Dialog(sip)
            invite = dialog.invite(sdp="\r\n".join(lines) + "\r\n")
            answer = sip.response(match=invite)
            statuses.add(answer.status or 0)
            if answer.status == 200:
                dialog.ack(answer)
                assert dialog.bye().status == 200
            else:
                assert answer.status in (400, 488), f"{answer.status} {answer.reason}"
                assert "SDP" in answer.reason or answer.status == 488
                dialog.ack(answer)

        check()
        assert rec.recorder.stats.sip_errors == 0
        still_records(rec, sip)
    assert {200, 400} <= statuses


def test_fuzzed_metadata_never_refuses_the_call(data: Path) -> None:
    # 80 calls in a row on 20 port pairs: released pairs must not rest (see PortAllocator)
    with RecorderThread(recorder_config(data), port_rest_s=0) as rec, SipClient(rec.address) as sip:

        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(edits=mutations())
        def check(edits: list[tuple[str, int, int]]) -> None:
            metadata = mutate(METADATA.encode(), edits).decode("latin-1")
            dialog = Dialog(sip)
            ok = dialog.call(metadata=metadata)
            assert len(answered_ports(ok)) == 2
            assert dialog.bye().status == 200

        check()
        assert rec.recorder.stats.sip_errors == 0
