"""Runs of RTP routed in bulk (``live.bulk``) do exactly what feeding their datagrams one by one does."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import pytest

from callrec.files import tape
from callrec.files.pcap import UdpBlock
from callrec.live.bulk import MIN_RUN, route_block
from callrec.live.tracker import LiveTracker
from callrec.wire.netparse import Datagram
from tests.live.test_capture_tracker import T0, A, B, dgram, make, packets_of, rtp, sip


def as_block(datagrams: list[Datagram]) -> UdpBlock:
    """The datagrams as the frame decoder hands a run of plain IPv4/UDP frames over."""
    parts, ips = [], []
    at = 0
    for d in datagrams:
        udp = struct.pack("!HHHH", d.sport, d.dport, 8 + len(d.payload), 0) + d.payload
        packet = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, d.src, d.dst) + udp
        parts.append(bytes(14) + packet)  # some bytes before each, as a frame's link header
        ips.append(at + 14)
        at += 14 + len(packet)
    buf = b"".join(parts)
    return UdpBlock(
        buf,
        np.frombuffer(buf, np.uint8),
        np.array([d.ts for d in datagrams], np.float64),
        np.array(ips, np.int64),
        np.array([len(d.payload) for d in datagrams], np.int64),
    )


def rtcp(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x80, 200, 6, ssrc) + bytes(20)


def scenario(seed: int) -> list[Datagram]:
    """Calls set up among each other's RTP: new SSRCs mid-call, a re-INVITE moving a stream, RTCP on the next
    port (a report and an RTP-looking packet), short packets, noise nobody signalled, BYEs with RTP trailing."""
    rng = random.Random(seed)
    out: list[Datagram] = []
    t = T0
    live: list[tuple[int, int, int]] = []  # (call, port of A, port of B)
    ssrcs: dict[tuple[int, str], int] = {}
    for step in range(900):
        t += 0.001
        if step % 100 == 0 and step < 700:
            c = step // 100
            cid, pa, pb = f"bulk-{c}@a", 4000 + 10 * c, 6000 + 10 * c
            out.append(dgram(t, A, 5060, B, 5060, sip("INVITE", cid, sdp_host=A, sdp_port=pa)))
            out.append(dgram(t, B, 5060, A, 5060, sip("200 OK", cid, sdp_host=B, sdp_port=pb, to_tag=True)))
            out.append(dgram(t, A, 5060, B, 5060, sip("ACK", cid, to_tag=True)))
            live.append((c, pa, pb))
        if step == 450:  # call 1's caller moves its media
            out.append(dgram(t, A, 5060, B, 5060, sip("INVITE", "bulk-1@a", sdp_host=A, sdp_port=4500, to_tag=True,
                                                      cseq=2)))  # fmt: skip
            live = [(c, 4500 if c == 1 else pa, pb) for c, pa, pb in live]
        if step == 600:
            out.append(dgram(t, A, 5060, B, 5060, sip("BYE", "bulk-0@a", to_tag=True, cseq=3)))
        for c, pa, pb in live:
            for side, (src, sport, dst, dport) in (("a", (A, pa, B, pb)), ("b", (B, pb, A, pa))):
                if step == 300 + 40 * c and side == "a":  # a new SSRC mid-call
                    ssrcs[(c, side)] = ssrcs.get((c, side), 0) + 1
                ssrc = 0x1000 * (c + 1) + 16 * ssrcs.get((c, side), 0) + (side == "b")
                out.append(dgram(t, src, sport, dst, dport, rtp(step, ssrc)))
        roll = rng.random()
        if roll < 0.05:
            out.append(dgram(t, A, 9999, B, rng.choice([7000, 7001, 8000]), rtp(step, 0xBAD)))  # noise
        elif roll < 0.08 and live:
            c, pa, pb = rng.choice(live)
            out.append(dgram(t, A, pa + 1, B, pb + 1, rtcp(0x1000 * (c + 1))))
        elif roll < 0.10 and live:
            c, pa, pb = rng.choice(live)
            out.append(dgram(t, A, pa + 1, B, pb + 1, rtp(step, 0x1000 * (c + 1))))  # RTP-looking, odd port
        elif roll < 0.12 and live:
            c, pa, pb = rng.choice(live)
            out.append(dgram(t, B, pb, A, pa, b"\x80\x00\x00\x01\x00\x00\x00\x00"))  # 8 bytes: not RTP
    return out


def tapes_of(tracker: LiveTracker, tapes: Path) -> dict[str, tuple[object, list[tuple[int, int, bytes]]]]:
    out = {}
    for meta in tapes.rglob(tape.META_FILE):
        info = tape.read_info(meta.parent)
        out[info.call_ids[0]] = ((info.end_reason, info.streams, info.ended_at), packets_of(meta.parent))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_blocks_routed_in_bulk_give_the_same_tapes_and_figures_as_datagram_by_datagram(
    tmp_path: Path, seed: int
) -> None:
    datagrams = scenario(seed)
    rng = random.Random(seed)
    one, _ = make(tmp_path / "one")
    for d in datagrams:
        one.datagram(d)
    bulk, _ = make(tmp_path / "bulk")
    at = 0
    while at < len(datagrams):
        size = rng.choice([1, MIN_RUN - 1, MIN_RUN, 50, 400, 3000])
        route_block(bulk, as_block(datagrams[at : at + size]))
        at += size
    assert bulk.counts == one.counts and bulk.counts["unmatched"] > 0 and bulk.counts["rtcp"] > 0
    assert bulk.calls  # calls still open
    state = [(c.dialog.info.call_id, c.rtp, c.last_media, c.ssrcs) for c in one.calls.values()]
    assert sorted(state) == sorted((c.dialog.info.call_id, c.rtp, c.last_media, c.ssrcs) for c in bulk.calls.values())
    for tracker in (one, bulk):
        tracker.close_all()
    assert bulk.closed == one.closed
    got, want = tapes_of(bulk, tmp_path / "bulk" / "tapes"), tapes_of(one, tmp_path / "one" / "tapes")
    assert got.keys() == want.keys() and len(want) == 7
    for call_id, (meta, packets) in want.items():
        assert got[call_id][0] == meta, call_id
        assert got[call_id][1] == packets, call_id
        assert len(packets) > 500


def test_a_block_of_steady_rtp_is_routed_in_bulk(tmp_path: Path) -> None:
    """Once every SSRC is known, a block of RTP takes the bulk path (not one datagram at a time)."""
    tracker, _ = make(tmp_path)
    route_block(tracker, as_block(scenario(0)[:400]))  # calls set up, SSRCs learnt
    calls = list(tracker.calls.values())
    before = tracker.counts["written"]
    steady = [dgram(T0 + 1 + i * 0.02, A, 4000, B, 6000, rtp(1000 + i, 0x1000)) for i in range(100)]
    fed: list[Datagram] = []
    tracker.datagram = fed.append  # type: ignore[method-assign]  # what would go one at a time
    route_block(tracker, as_block(steady))
    assert not fed and tracker.counts["written"] == before + 100
    assert calls[0].last_media == pytest.approx(T0 + 1 + 99 * 0.02)
    # a new SSRC in the middle of a run: that datagram alone goes one at a time, the rest in bulk
    steady[50] = dgram(T0 + 3, A, 4000, B, 6000, rtp(2000, 0x7777))
    route_block(tracker, as_block(steady))
    assert [d.payload[8:12] for d in fed] == [b"\0\0\x77\x77"]
    assert tracker.counts["written"] == before + 100 + 99
