"""A session records only its own media (issue 13, item 1).

The restart scenario: a media proxy goes on forking an old call to the recorder's ports after the recorder
was stopped (its BYE answered 405), so stale RTP reaches every port of the range from a source of its
own. The recorder is restarted and a new SIPREC call made: its tape must hold none of the stale packets,
count them in call.json, and mix into the call's own audio only. Real processes (``callrec record``,
``callrec mix``), real sockets; the audio oracle is ffmpeg (encoding what is sent, decoding the mix).

Then, in-process, the latch: an SRC that sends from another port than its SDP says is recorded, until its
advertised source appears; a re-INVITE moving the source moves the filter; the figures reach /metrics.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dpkt
import numpy as np
import pytest

from callrec.api.ops import RecorderCollector
from callrec.recorder import recstats
from tests.support.audio import FFMPEG, decode, mix_json, need, xcorr
from tests.support.recorder_proc import RecorderProcess, free_udp_block, read_call
from tests.support.sipclient import (
    Dialog,
    RecorderThread,
    SipClient,
    answered_ports,
    info_of,
    recorder_config,
    rtp_packet,
    siprec_sdp,
    wait_for,
)
from tests.support.synth import ffmpeg_encode, voice

HOST = "127.0.0.1"
RATE = 8000
FRAME = 160  # 20 ms of G.711
PAIRS = 4  # a small range: the stale traffic reaches every port of it
CALL_S = 3.0
STALE_SSRC = 0x57A1E000
TONE_HZ = 1000.0
MAX_LAG = int(0.020 * RATE)
SPRAY_LIMIT_S = 120  # the sprayer stops by itself even if a test forgets to stop it


class Sprayer:
    """Stale RTP (a 1 kHz tone, PCMA) sent every 20 ms to every port of a range, from one source."""

    def __init__(self, first: int, last: int) -> None:
        self.ports = list(range(first, last + 1))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.source = int(self.sock.getsockname()[1])
        t = np.arange(RATE) / RATE
        self.audio = ffmpeg_encode((8000 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16), "PCMA")
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sprayer", daemon=True)

    def __enter__(self) -> Sprayer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        deadline = time.monotonic() + SPRAY_LIMIT_S
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            offset = (n * FRAME) % (len(self.audio) - FRAME)
            for i, port in enumerate(self.ports):
                packet = rtp_packet(n, n * FRAME, STALE_SSRC + i, 8, self.audio[offset : offset + FRAME])
                try:
                    self.sock.sendto(packet, (HOST, port))
                    self.sent += 1
                except OSError:
                    pass  # nobody listens there now (the recorder is down)
            n += 1
            self._stop.wait(0.02)


@contextmanager
def _src_media(count: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """An SRC's media sockets: per stream an RTP socket on an even port and its RTCP socket on the next."""
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        base = free_udp_block(2 * count, 20000, 60000)
        for i in range(count):
            rtp, rtcp = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
            pairs.append((rtp, rtcp))
            rtp.bind((HOST, base + 2 * i))
            rtcp.bind((HOST, base + 2 * i + 1))
        yield pairs
    finally:
        for rtp, rtcp in pairs:
            rtp.close()
            rtcp.close()


def _play(streams: list[tuple[socket.socket, socket.socket, int, bytes, int]]) -> None:
    """Send each stream's PCMA payload paced in real time, with an RTCP sender report at the start and the
    end: (RTP socket, RTCP socket, destination RTP port, payload, SSRC)."""
    frames = min(len(payload) for _, _, _, payload, _ in streams) // FRAME

    def reports(sent: int) -> None:
        for _, rtcp, port, _, ssrc in streams:
            now = time.time() + 2_208_988_800  # NTP time
            sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, int(now), int(now % 1 * 2**32), sent * FRAME,
                             sent, sent * FRAME)  # fmt: skip
            rtcp.sendto(sr, (HOST, port + 1))

    reports(0)
    start = time.monotonic()
    for n in range(frames):
        delay = start + n * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for rtp, _, port, payload, ssrc in streams:
            rtp.sendto(rtp_packet(n, n * FRAME, ssrc, 8, payload[n * FRAME : (n + 1) * FRAME], n == 0), (HOST, port))
    reports(frames)


def _tape_sources(tape: Path) -> list[tuple[str, int, int, int]]:
    """(source address, source port, destination port, SSRC or -1) of every packet on a tape."""
    out = []
    with (tape / "media.pcap").open("rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            ip = dpkt.ip.IP(frame)
            udp = ip.data
            data = bytes(udp.data)
            rtcp = 200 <= data[1] <= 204
            ssrc = struct.unpack_from("!I", data, 8)[0] if len(data) >= 12 and not rtcp else -1
            out.append((socket.inet_ntoa(ip.src), udp.sport, udp.dport, ssrc))
    return out


def _tone_leak(signal: np.ndarray) -> float:
    """How much of the stale tone a channel holds: its normalised correlation with the tone, at the best of
    the tone's phases (one period is 8 samples)."""
    tone = np.sin(2 * np.pi * TONE_HZ * np.arange(len(signal)) / RATE)
    return abs(xcorr(signal, tone, 8)[1])


@pytest.mark.slow
def test_after_a_restart_stale_rtp_on_every_port_never_reaches_a_new_call(tmp_path: Path) -> None:
    need(FFMPEG, "ffmpeg")
    data = tmp_path / "data"
    first = RecorderProcess(data, rtp_pairs=PAIRS)
    # the caller and callee of the new call: speech-like signals, each its own
    truth = [voice(CALL_S, seed) for seed in (11, 12)]
    payloads = [ffmpeg_encode(pcm, "PCMA") for pcm in truth]
    with first, Sprayer(first.rtp_first, first.rtp_last) as sprayer:
        # the old call: recorded, then the recorder is stopped while its media keeps coming
        with SipClient(first.address) as sip, _src_media(2) as media:
            old = Dialog(sip)
            old.call([rtp.getsockname()[1] for rtp, _ in media])
            time.sleep(0.3)
            assert first.stop() == 0, first.log()
        second = RecorderProcess(data, rtp_pairs=PAIRS)
        second.rtp_first, second.rtp_last = first.rtp_first, first.rtp_last
        with second:
            time.sleep(0.3)  # the stale traffic reaches the restarted recorder's ports as they open
            with SipClient(second.address) as sip, _src_media(2) as media:
                call = Dialog(sip)
                ok = call.call([rtp.getsockname()[1] for rtp, _ in media])
                ports = answered_ports(ok)
                assert all(first.rtp_first <= p < first.rtp_last for p in ports), ports
                streams = zip(media, ports, payloads, strict=True)
                _play(
                    [
                        (rtp, rtcp, port, payload, 0x5EED0001 + i)
                        for i, ((rtp, rtcp), port, payload) in enumerate(streams)
                    ]
                )
                src_ports = {rtp.getsockname()[1] for rtp, _ in media} | {rtcp.getsockname()[1] for _, rtcp in media}
                time.sleep(0.2)
                assert call.bye().status == 200
            wait_for(lambda: any(read_call(t)["call_ids"] == [call.call_id] and read_call(t)["closed_cleanly"]
                                 for t in second.tapes()), 10, "the new call's tape to close")  # fmt: skip
            assert second.stop() == 0, second.log()
        assert sprayer.sent > 0
        stale_source = sprayer.source
    (tape,) = [t for t in second.tapes() if read_call(t)["call_ids"] == [call.call_id]]

    # the tape: every packet from the SRC's advertised sources, none from the stale one
    packets = _tape_sources(tape)
    assert packets, "the call was recorded"
    assert not [p for p in packets if p[1] == stale_source], "stale RTP on the new call's tape"
    assert {p[1] for p in packets} == src_ports, packets[:5]
    assert not [p for p in packets if STALE_SSRC <= p[3] < STALE_SSRC + 2 * PAIRS]
    rtp_count = sum(1 for p in packets if p[2] in ports)
    assert rtp_count == 2 * int(CALL_S * 50), "every packet the SRC sent is on the tape"
    assert sum(1 for p in packets if p[2] in {q + 1 for q in ports}) == 4, "and its RTCP"

    # call.json counts what was kept off the tape, per stream
    info = read_call(tape)
    foreign = [s["foreign_packets"] for s in info["streams"]]
    assert all(n > 0 for n in foreign), info["streams"]
    assert all(s["latched_addr"] == "" and s["latched_port"] == 0 for s in info["streams"])
    assert "dropped" in second.log() and "packets from sources other than the SRC's" in second.log()

    # the mix holds the call's own two signals, each in its channel, and no trace of the stale tone
    out = tmp_path / "call.wav"
    mix_json(str(tape), "-o", str(out))
    audio = decode(out)
    for channel, own in enumerate(truth):
        lag, peak = xcorr(audio[:, channel], own, MAX_LAG + int(0.5 * RATE))
        assert peak > 0.95, f"channel {channel} vs what its party sent: lag {lag}, peak {peak:.3f}"
        leak = _tone_leak(audio[:, channel])
        assert leak < 0.05, f"the stale tone is heard in channel {channel}: {leak:.3f}"


# ---- the latch, in-process -----------------------------------------------------------------------------
@contextmanager
def _recorder(data: Path) -> Iterator[RecorderThread]:
    with RecorderThread(recorder_config(data)) as running:
        yield running
        assert running.recorder.stats.sip_errors == 0


def _tape_of(rec: RecorderThread, call_id: str) -> int:
    def count() -> int:
        session = rec.recorder.sessions.get(call_id)
        return session.tape.packets if session is not None and session.tape is not None else -1

    return rec.call(count)


def _send(sock: socket.socket, port: int, ssrc: int, first: int, count: int) -> None:
    for n in range(first, first + count):
        sock.sendto(rtp_packet(n, n * FRAME, ssrc), (HOST, port))
        time.sleep(0.002)


@pytest.mark.slow
def test_an_src_sending_from_another_port_is_latched_until_its_advertised_source_appears(data: Path) -> None:
    with _recorder(data) as rec, SipClient(rec.address) as sip, _src_media(2) as media:
        (advertised, _), (elsewhere, _) = media
        dialog = Dialog(sip)
        [port] = answered_ports(dialog.call([advertised.getsockname()[1]]))
        _send(elsewhere, port, 0xA, 0, 10)  # NAT: the SRC's packets come from another port
        wait_for(lambda: _tape_of(rec, dialog.call_id) == 10, 5, "the latched packets on the tape")
        _send(advertised, port, 0xB, 0, 10)  # its advertised source appears: it takes over
        time.sleep(0.2)
        _send(elsewhere, port, 0xA, 10, 10)  # dropped from now on
        _send(advertised, port, 0xB, 10, 5)
        wait_for(lambda: _tape_of(rec, dialog.call_id) == 25, 5, "the advertised packets on the tape")
        assert dialog.bye().status == 200
        tape = rec.closed_tape_of(dialog.call_id)
        elsewhere_port = elsewhere.getsockname()[1]
    ssrcs = [p[3] for p in _tape_sources(tape)]
    assert ssrcs == [0xA] * 10 + [0xB] * 15, ssrcs
    (stream,) = info_of(tape).streams
    assert stream.foreign_packets == 10
    assert (stream.latched_addr, stream.latched_port) == ("", 0), "re-latched to the advertised source"
    assert elsewhere_port not in {p[1] for p in _tape_sources(tape)[10:]}


@pytest.mark.slow
def test_a_stream_that_stays_latched_names_its_source_in_call_json(data: Path) -> None:
    with _recorder(data) as rec, SipClient(rec.address) as sip, _src_media(2) as media:
        (nat, _), (stray, _) = media
        dialog = Dialog(sip)
        # an SDP written behind a NAT: a private address the packets never come from
        sdp = siprec_sdp([40000]).replace(f"c=IN IP4 {HOST}", "c=IN IP4 10.1.2.3")
        [port] = answered_ports(dialog.call(sdp=sdp))
        _send(nat, port, 0xA, 0, 10)
        wait_for(lambda: _tape_of(rec, dialog.call_id) == 10, 5, "the latched packets on the tape")
        _send(stray, port, 0xC, 0, 5)  # a second source is not latched to
        _send(nat, port, 0xA, 10, 5)
        wait_for(lambda: _tape_of(rec, dialog.call_id) == 15, 5, "the rest of the latched packets")
        assert dialog.bye().status == 200
        tape = rec.closed_tape_of(dialog.call_id)
        nat_port = nat.getsockname()[1]
    figures = recstats.read(data)  # the recorder has stopped: its last figures are written
    (stream,) = info_of(tape).streams
    assert (stream.foreign_packets, stream.latched_addr, stream.latched_port) == (5, HOST, nat_port)
    assert [p[3] for p in _tape_sources(tape)] == [0xA] * 15
    # and /metrics: the recorder's figures file, read by the API's collector
    assert figures["callrec_recorder_packets_foreign"] == 5 and figures["callrec_recorder_streams_latched"] == 1
    samples = {s.name: s.value for family in RecorderCollector(data).collect() for s in family.samples}
    assert samples["callrec_recorder_packets_foreign_total"] == 5
    assert samples["callrec_recorder_packets_recorded_total"] == 15


def test_a_reinvite_moving_the_srcs_source_moves_the_filter(data: Path) -> None:
    with _recorder(data) as rec, SipClient(rec.address) as sip, _src_media(2) as media:
        (before, _), (after, _) = media
        dialog = Dialog(sip)
        [port] = answered_ports(dialog.call([before.getsockname()[1]]))
        _send(before, port, 0xA, 0, 5)
        wait_for(lambda: _tape_of(rec, dialog.call_id) == 5, 5, "the first source's packets")
        ok = dialog.reinvite(siprec_sdp([after.getsockname()[1]]))
        assert ok.status == 200 and answered_ports(ok) == [port]
        _send(after, port, 0xB, 0, 5)
        time.sleep(0.2)
        _send(before, port, 0xA, 5, 5)  # the old source: no longer the SRC's
        wait_for(lambda: _tape_of(rec, dialog.call_id) == 10, 5, "the moved source's packets")
        time.sleep(0.3)
        assert dialog.bye().status == 200
        tape = rec.closed_tape_of(dialog.call_id)
    assert [p[3] for p in _tape_sources(tape)] == [0xA] * 5 + [0xB] * 5
    assert info_of(tape).streams[0].foreign_packets == 5


@pytest.mark.parametrize("rest_s", [None, 0.0], ids=["resting", "no-rest"])
def test_a_closed_sessions_ports_rest_before_the_next_call_gets_them(data: Path, rest_s: float | None) -> None:
    cfg = recorder_config(data)
    cfg.rtp_last = cfg.rtp_first + 1  # one pair
    kwargs = {} if rest_s is None else {"port_rest_s": rest_s}
    with RecorderThread(cfg, **kwargs) as rec, SipClient(rec.address) as sip:
        dialog = Dialog(sip)
        assert answered_ports(dialog.call([40000])) == [cfg.rtp_first]
        assert dialog.bye().status == 200
        rec.wait_closed()
        again = Dialog(sip)
        again.invite([40000])
        answer = sip.response()
        again.ack(answer)
    if rest_s is None:
        # the only pair rests: 503, not a new call on ports that may still receive the old one's media
        assert (answer.status, answer.reason) == (503, "Service Unavailable: no free RTP ports")
        assert answer.header("retry-after")
    else:
        assert answer.status == 200 and answered_ports(answer) == [cfg.rtp_first]
