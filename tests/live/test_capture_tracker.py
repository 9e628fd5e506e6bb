"""The live capture's call following without an interface: datagrams as the ring's decoder gives them, in.

One tape per call (source ``capture``), opened on the INVITE, holding the call's SIP and RTP as received and
nothing else; closed a grace after the BYE, on inactivity, on shutdown; a re-INVITE moves a binding; a
proxy's two legs (same Call-ID) are one tape; a rejected call leaves none; the open-call cap; the domain
rules; crash-recovery markers. Needs no root.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import dpkt
import pytest

from callrec.config import ConfigError
from callrec.files import tape
from callrec.live.domains import DomainRule
from callrec.live.tracker import LiveTracker, TrackerSettings
from callrec.mix.run import mix
from callrec.recorder.recovery import OPEN_DIR, TapeRegistry
from callrec.wire.netparse import Datagram
from callrec.wire.sip import SipMessage

A, B, PROXY = "198.51.100.1", "198.51.100.2", "198.51.100.9"
T0 = 1_700_000_000.0


def ip(text: str) -> bytes:
    return socket.inet_aton(text)


def sip(kind: str, call_id: str, *, sdp_host: str = "", sdp_port: int = 0, to_tag: bool = False,
        cseq: int = 1, ruri: str = "sip:2002@acme.example", extra: str = "") -> bytes:  # fmt: skip
    body = ""
    if sdp_port:
        body = (f"v=0\r\no=- 1 1 IN IP4 {sdp_host}\r\ns=-\r\nc=IN IP4 {sdp_host}\r\nt=0 0\r\n"
                f"m=audio {sdp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")  # fmt: skip
    method = kind.split()[0]
    start = f"SIP/2.0 {kind}" if kind[0].isdigit() else f"{kind} {ruri} SIP/2.0"
    cseq_method = "INVITE" if kind[0].isdigit() else method
    headers = [
        start, f"Via: SIP/2.0/UDP {A}:5060;branch=z9hG4bK{call_id}{cseq}",
        '"Alice" <sip:1001@acme.example>;tag=alice1',
        f"To: <sip:2002@acme.example>{';tag=bob1' if to_tag else ''}", f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method}", "Max-Forwards: 70", *([extra] if extra else []),
        "Content-Type: application/sdp" if body else "", f"Content-Length: {len(body)}",
    ]  # fmt: skip
    headers[2] = "From: " + headers[2]
    return ("\r\n".join(h for h in headers if h) + "\r\n\r\n" + body).encode()


def rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, ssrc) + bytes(160)


def dgram(ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> Datagram:
    return Datagram(ts, 17, ip(src), sport, ip(dst), dport, payload)


def make(tmp_path: Path, **kw: object) -> tuple[LiveTracker, list[tuple[str, Path]]]:
    events: list[tuple[str, Path]] = []
    settings = TrackerSettings(tapes_dir=tmp_path / "tapes", **kw)  # type: ignore[arg-type]
    tracker = LiveTracker(
        settings,
        registry=TapeRegistry(settings.tapes_dir),
        on_opened=lambda f: events.append(("opened", f)),
        on_closed=lambda f: events.append(("closed", f)),
        on_discarded=lambda f: events.append(("discarded", f)),
    )
    return tracker, events


def call(tracker: LiveTracker, call_id: str, t: float, *, packets: int = 50, bye: bool = True) -> None:
    tracker.datagram(dgram(t, A, 5060, B, 5060, sip("INVITE", call_id, sdp_host=A, sdp_port=4000)))
    tracker.datagram(dgram(t + 0.1, B, 5060, A, 5060, sip("200 OK", call_id, sdp_host=B, sdp_port=6000, to_tag=True)))
    tracker.datagram(dgram(t + 0.2, A, 5060, B, 5060, sip("ACK", call_id, to_tag=True)))
    for i in range(packets):
        tracker.datagram(dgram(t + 0.3 + i * 0.02, A, 4000, B, 6000, rtp(i, 0xA)))
        tracker.datagram(dgram(t + 0.3 + i * 0.02, B, 6000, A, 4000, rtp(i, 0xB)))
    if bye:
        end = t + 0.3 + packets * 0.02
        tracker.datagram(dgram(end, A, 5060, B, 5060, sip("BYE", call_id, to_tag=True, cseq=2)))


def packets_of(folder: Path) -> list[tuple[int, int, bytes]]:
    with (folder / tape.MEDIA_FILE).open("rb") as f:
        return [(ipp.data.sport, ipp.data.dport, bytes(ipp.data.data)) for _, frame in dpkt.pcap.Reader(f)
                for ipp in [dpkt.ip.IP(frame)]]  # fmt: skip


def test_a_call_is_one_tape_closed_a_grace_after_its_bye(tmp_path: Path) -> None:
    tracker, events = make(tmp_path, end_grace_s=2.0, domain=DomainRule.parse("ruri"))
    call(tracker, "call-1@a", T0)
    # noise nobody signalled, and an OPTIONS ping: on no tape
    tracker.datagram(dgram(T0 + 1, A, 4444, B, 7777, rtp(1, 0xC)))
    tracker.datagram(dgram(T0 + 1, A, 5060, B, 5060, sip("OPTIONS", "ping@a")))
    assert [e for e, _ in events] == ["opened"]
    tracker.tick(T0 + 1.3 + 1.0)  # within the grace: still open (RTP may trail the BYE)
    assert len(tracker.calls) == 1
    tracker.tick(T0 + 1.3 + 2.5)
    assert [e for e, _ in events] == ["opened", "closed"] and not tracker.calls
    folder = events[0][1]
    assert events[1][1] == folder and folder.is_relative_to(tmp_path / "tapes")
    info = tape.read_info(folder)
    assert info.source == "capture" and info.end_reason == "bye" and info.closed_cleanly and not info.interrupted
    assert info.domain == "acme.example" and info.call_ids == ["call-1@a"]
    assert {(p.id, p.role, p.number) for p in info.parties} == {("A", "caller", "1001"), ("B", "callee", "2002")}
    assert {(s.party, s.local_addr, s.local_port) for s in info.streams} == {("B", A, 4000), ("A", B, 6000)}
    got = packets_of(folder)
    assert len(got) == 4 + 100  # INVITE, 200, ACK, BYE and both directions' RTP, nothing else
    assert [p[2][:6] for p in got[:3]] == [b"INVITE", b"SIP/2.", b"ACK si"]
    assert tracker.counts["calls"] == 1 and tracker.closed == {"bye": 1}
    assert not list((tmp_path / "tapes" / OPEN_DIR).iterdir()), "the closed tape is still marked open"
    assert not tracker.tracker.dialogs and not tracker.tracker.bindings and not tracker.tracker.ssrcs


def test_a_reinvite_moves_a_binding_and_a_second_leg_is_the_same_tape(tmp_path: Path) -> None:
    tracker, events = make(tmp_path)
    cid = "moved@a"
    tracker.datagram(dgram(T0, A, 5060, PROXY, 5060, sip("INVITE", cid, sdp_host=A, sdp_port=4000)))
    tracker.datagram(dgram(T0, PROXY, 5060, B, 5060, sip("INVITE", cid, sdp_host=A, sdp_port=4000)))  # 2nd leg
    tracker.datagram(dgram(T0 + 0.1, B, 5060, PROXY, 5060, sip("200 OK", cid, sdp_host=B, sdp_port=6000, to_tag=True)))
    tracker.datagram(dgram(T0 + 0.1, PROXY, 5060, A, 5060, sip("200 OK", cid, sdp_host=B, sdp_port=6000, to_tag=True)))
    tracker.datagram(dgram(T0 + 0.2, B, 6000, A, 4000, rtp(1, 0xB)))
    # the caller moves its media to port 4100
    tracker.datagram(dgram(T0 + 1, A, 5060, B, 5060, sip("INVITE", cid, sdp_host=A, sdp_port=4100, to_tag=True,
                                                         cseq=2)))  # fmt: skip
    tracker.datagram(dgram(T0 + 1.1, B, 6000, A, 4100, rtp(2, 0xB)))
    tracker.close_all()
    assert [e for e, _ in events] == ["opened", "closed"]
    info = tape.read_info(events[0][1])
    assert info.end_reason == "shutdown"
    assert {(s.party, s.local_port) for s in info.streams} == {("B", 4000), ("B", 4100), ("A", 6000)}
    rtp_ports = [dport for _, dport, payload in packets_of(events[0][1]) if payload[:1] == b"\x80"]
    assert rtp_ports == [4000, 4100]


def test_a_rejected_call_leaves_no_tape_and_quiet_calls_close(tmp_path: Path) -> None:
    tracker, events = make(tmp_path, media_timeout_s=30.0, sip_timeout_s=30.0, end_grace_s=1.0)
    tracker.datagram(dgram(T0, A, 5060, B, 5060, sip("INVITE", "busy@a", sdp_host=A, sdp_port=4000)))
    tracker.datagram(dgram(T0 + 0.1, B, 5060, A, 5060, sip("486 Busy Here", "busy@a", to_tag=True)))
    call(tracker, "quiet@a", T0, bye=False)
    tracker.tick(T0 + 5)
    assert [e for e, _ in events] == ["opened", "opened", "discarded"]
    assert not events[2][1].exists() and tracker.closed == {"rejected": 1}
    tracker.tick(T0 + 20)
    assert len(tracker.calls) == 1
    tracker.tick(T0 + 40)
    assert [e for e, _ in events][-1] == "closed" and tracker.closed == {"rejected": 1, "idle": 1}
    assert tape.read_info(events[-1][1]).end_reason == "idle"


def test_open_calls_are_capped(tmp_path: Path) -> None:
    tracker, events = make(tmp_path, max_calls=2)
    for n in range(4):
        call(tracker, f"c{n}@a", T0 + n, packets=2, bye=False)
    assert len(tracker.calls) == 2 and tracker.counts["calls_refused"] == 2
    assert len(tracker.tracker.dialogs) == 2, "a refused call is not followed either"
    tracker.close_all()
    assert [e for e, _ in events].count("closed") == 2


def test_sip_over_tcp_is_followed(tmp_path: Path) -> None:
    tracker, events = make(tmp_path)
    invite = sip("INVITE", "tcp@a", sdp_host=A, sdp_port=4000)
    # one message cut in two segments, then the answer in one
    tracker.datagram(Datagram(T0, 6, ip(A), 40000, ip(B), 5060, invite[:100]))
    tracker.datagram(Datagram(T0, 6, ip(A), 40000, ip(B), 5060, invite[100:]))
    answer = sip("200 OK", "tcp@a", sdp_host=B, sdp_port=6000, to_tag=True)
    tracker.datagram(Datagram(T0 + 0.1, 6, ip(B), 5060, ip(A), 40000, answer))
    tracker.datagram(dgram(T0 + 0.2, A, 4000, B, 6000, rtp(1, 0xA)))
    tracker.close_all()
    got = packets_of(events[0][1])
    assert [p[2] for p in got[:2]] == [invite, answer] and len(got) == 3


@pytest.mark.parametrize(
    ("rule", "domain"),
    [("ruri", "acme.example"), ("to", "acme.example"), ("header:X-Tenant", "globex"), ("fixed:initech", "initech")],
)
def test_domain_rules(rule: str, domain: str) -> None:
    msg = SipMessage.parse(sip("INVITE", "d@a", sdp_host=A, sdp_port=4000, extra="X-Tenant: Globex"))
    assert DomainRule.parse(rule).domain_of(msg) == domain
    assert DomainRule.parse("header:X-Missing").domain_of(msg) == "default"
    assert DomainRule.parse("ruri").domain_of(SipMessage.parse(sip("INVITE", "d", ruri="sip:1@[2001:db8::1]:5060"))) \
        == "default"  # fmt: skip


@pytest.mark.parametrize("bad", ["", "host", "header:", "fixed:Not A Domain", "ruri:x"])
def test_bad_domain_rules_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="--domain-from"):
        DomainRule.parse(bad)


def test_a_tape_with_the_callees_reinvite_mixes_each_party_as_itself(tmp_path: Path) -> None:
    """The tape holds the call's SIP: a re-INVITE the callee sends (a session refresh) must not make the mixer
    take the callee for the caller (the tape's initial INVITE says whose From tag is the caller's)."""
    tracker, events = make(tmp_path)
    cid = "refresh@a"
    call(tracker, cid, T0, packets=0, bye=False)  # the refresh comes before any media: nothing is routed yet
    refresh = sip("INVITE", cid, sdp_host=B, sdp_port=6000, to_tag=True, cseq=1)
    refresh = refresh.replace(b"tag=alice1", b"tag=bob1").replace(b"To: <sip:2002@acme.example>;tag=bob1",
                                                                 b"To: <sip:1001@acme.example>;tag=alice1")  # fmt: skip
    tracker.datagram(dgram(T0 + 1, B, 5060, A, 5060, refresh))
    for i in range(50):
        tracker.datagram(dgram(T0 + 0.3 + i * 0.02, A, 4000, B, 6000, rtp(i, 0xA)))
        tracker.datagram(dgram(T0 + 0.3 + i * 0.02, B, 6000, A, 4000, rtp(i, 0xB)))
    tracker.close_all()
    folder = events[-1][1]
    assert {(s.party, s.local_port) for s in tape.read_info(folder).streams} == {("B", 4000), ("A", 6000)}
    report = mix(folder, tmp_path / "out.wav")
    [result] = report.calls
    assert {(s["party"], s["ssrc"]) for s in result.streams} == {("A", 0xA), ("B", 0xB)}, result.streams


def test_a_masked_call_id_leg_and_a_relayed_leg_join_the_call(tmp_path: Path) -> None:
    """Legs under other Call-IDs are one call too: a proxy masking the Call-ID (the same INVITE forwarded, the
    same From, a lower Max-Forwards) and a B2BUA's second leg whose RTP is the first leg's, relayed."""
    tracker, events = make(tmp_path)
    invite = sip("INVITE", "leg1@a", sdp_host=A, sdp_port=4000)
    tracker.datagram(dgram(T0, A, 5060, PROXY, 5060, invite))
    masked = invite.replace(b"leg1@a", b"masked-xyz").replace(b"Max-Forwards: 70", b"Max-Forwards: 69")
    tracker.datagram(dgram(T0 + 0.01, PROXY, 5060, B, 5060, masked))
    assert [e for e, _ in events] == ["opened"], "the forwarded INVITE is the same call"
    answer = sip("200 OK", "masked-xyz", sdp_host=B, sdp_port=6000, to_tag=True)
    tracker.datagram(dgram(T0 + 0.1, B, 5060, PROXY, 5060, answer))
    tracker.close_all()
    assert [e for e, _ in events] == ["opened", "closed"]
    assert tape.read_info(events[0][1]).call_ids == ["leg1@a", "masked-xyz"]

    tracker, events = make(tmp_path / "b2bua")
    tracker.datagram(dgram(T0, A, 5060, PROXY, 5060, sip("INVITE", "in@a", sdp_host=A, sdp_port=4000)))
    tracker.datagram(dgram(T0, PROXY, 5060, A, 5060, sip("200 OK", "in@a", sdp_host=PROXY, sdp_port=10000,
                                                         to_tag=True)))  # fmt: skip
    out = sip("INVITE", "out@p", sdp_host=PROXY, sdp_port=10002).replace(b"tag=alice1", b"tag=pbx1")
    tracker.datagram(dgram(T0 + 0.1, PROXY, 5060, B, 5060, out))
    answer = sip("200 OK", "out@p", sdp_host=B, sdp_port=6000, to_tag=True).replace(b"tag=alice1", b"tag=pbx1")
    tracker.datagram(dgram(T0 + 0.1, B, 5060, PROXY, 5060, answer))
    assert [e for e, _ in events] == ["opened", "opened"]
    tracker.datagram(dgram(T0 + 1, A, 4000, PROXY, 10000, rtp(1, 0xA)))  # the caller's packet ...
    tracker.datagram(dgram(T0 + 1.001, PROXY, 10002, B, 6000, rtp(1, 0xA)))  # ... relayed on the second leg
    assert [e for e, _ in events] == ["opened", "opened", "discarded"], "the relayed leg joins the first call"
    assert len(tracker.calls) == 1
    tracker.close_all()
    folder = events[0][1]
    assert tape.read_info(folder).call_ids == ["in@a", "out@p"]
    assert [dport for _, dport, payload in packets_of(folder) if payload[:1] == b"\x80"] == [10000, 6000]


def test_opening_tapes_waits_for_no_disk_and_a_closed_tape_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of INVITEs must not be a burst of fsyncs on the thread that keeps up with the ring: a tape's
    call.json is written atomically as the call opens and its streams appear, and flushed to disk when it
    closes; a tape that is deleted at once (a call never answered) is not flushed at all."""
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    tracker, events = make(tmp_path, end_grace_s=1.0)
    for n in range(20):
        call(tracker, f"burst-{n}@a", T0, packets=3, bye=False)
    tracker.datagram(dgram(T0, A, 5060, B, 5060, sip("INVITE", "busy@a", sdp_host=A, sdp_port=4000)))
    tracker.datagram(dgram(T0 + 0.1, B, 5060, A, 5060, sip("486 Busy Here", "busy@a", to_tag=True)))
    tracker.tick(T0 + 5)
    assert [e for e, _ in events].count("opened") == 21 and [e for e, _ in events].count("discarded") == 1
    assert synced == [], "opening tapes (and updating their streams, and discarding one) waited for the disk"
    for n in range(20):
        assert tape.read_info(events[n][1]).call_ids == [f"burst-{n}@a"]  # written, atomically
    tracker.close_all()
    closed = [folder for e, folder in events if e == "closed"]
    assert len(closed) == 20
    # each closed tape's call.json went to disk (through its temporary name, renamed over call.json)
    assert sorted(Path(p).parent for p in synced) == sorted(closed)
    assert all(Path(p).name.startswith(".call.") for p in synced)
