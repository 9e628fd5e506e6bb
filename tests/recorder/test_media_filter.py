"""The recorder's source filter (``MediaReceiver.expect``) and port pairs resting after their session."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from callrec.config import RecorderConfig
from callrec.models import CallInfo, Stream
from callrec.recorder import media_io, mmsg
from callrec.recorder.media_io import MediaReceiver
from callrec.recorder.ports import PORT_REST_S, PortAllocator, PortsExhausted
from callrec.recorder.recorder import Recorder
from tests.support.recorder_proc import free_udp_block

HOST = "127.0.0.1"
Packet = tuple[float, bytes, int, bytes, int, bytes]


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, ssrc) + b"\xd5" * 160


@contextmanager
def _senders(count: int) -> Iterator[list[socket.socket]]:
    """``count`` UDP sockets on 127.0.0.1, each on a port of its own (RTP sources)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind((HOST, 0))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


class _Rig:
    """A ``MediaReceiver`` on one pair, driven step by step on an event loop of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, base: int) -> None:
        self.receiver = MediaReceiver(loop, HOST, tick=0.01)
        self.base = base
        self.written: list[Packet] = []
        self.receiver.bind(base)

    def start(self) -> None:
        self.receiver.start(self.base, HOST, lambda *packet: self.written.append(packet))

    def sources(self) -> list[int]:
        """The source port of every packet written, in order."""
        return [p[2] for p in self.written]

    def ssrcs(self) -> list[int]:
        return [struct.unpack_from("!I", p[5], 8)[0] for p in self.written]


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _settle(rig: _Rig) -> None:
    """Let every tick read what was sent (loopback delivers at once)."""
    await asyncio.sleep(0.08)
    rig.receiver.poll()


def _run(body: Callable[[_Rig], object]) -> _Rig:
    base = free_udp_block(2, 40000, 60000)

    async def main() -> _Rig:
        rig = _Rig(asyncio.get_running_loop(), base)
        try:
            result = body(rig)
            if asyncio.iscoroutine(result):
                await result
        finally:
            rig.receiver.close_all()
        return rig

    return asyncio.run(main())


def test_only_the_advertised_source_is_taken_once_it_has_sent() -> None:
    with _senders(3) as (src, other, late):

        async def body(rig: _Rig) -> None:
            rig.start()
            rig.receiver.expect(rig.base, (HOST, _port(src)), (HOST, _port(src) + 1))
            src.sendto(_rtp(1, 1), (HOST, rig.base))
            await _settle(rig)
            other.sendto(_rtp(1, 2), (HOST, rig.base))
            src.sendto(_rtp(2, 1), (HOST, rig.base))
            late.sendto(_rtp(1, 3), (HOST, rig.base))
            await _settle(rig)
            assert rig.receiver.pair_filter(rig.base) == (2, None)

        rig = _run(body)
    assert rig.ssrcs() == [1, 1], "after the advertised source has sent, nothing else is taken"
    assert (rig.receiver.received, rig.receiver.foreign, rig.receiver.latches) == (2, 2, 0)


def test_an_src_sending_from_elsewhere_is_latched_then_its_advertised_source_takes_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(media_io, "LATCH_HOLD_S", 0.2)
    with _senders(3) as (advertised, nat, stray):
        figures: list[tuple[int, tuple[str, int] | None]] = []

        async def body(rig: _Rig) -> None:
            rig.start()
            rig.receiver.expect(rig.base, (HOST, _port(advertised)), (HOST, _port(advertised) + 1))
            for seq in range(3):
                nat.sendto(_rtp(seq, 2), (HOST, rig.base))
            await _settle(rig)
            assert rig.written == [], "held back while the advertised source may still come"
            await _until(lambda: len(rig.written) == 3)  # the hold ends at the next tick after 0.2 s
            assert rig.ssrcs() == [2, 2, 2]
            nat.sendto(_rtp(3, 2), (HOST, rig.base))
            stray.sendto(_rtp(0, 3), (HOST, rig.base))  # a second other source is never latched to
            await _settle(rig)
            figures.append(rig.receiver.pair_filter(rig.base))
            advertised.sendto(_rtp(0, 1), (HOST, rig.base))
            await _settle(rig)
            nat.sendto(_rtp(4, 2), (HOST, rig.base))  # dropped from now on
            advertised.sendto(_rtp(1, 1), (HOST, rig.base))
            await _settle(rig)
            figures.append(rig.receiver.pair_filter(rig.base))

        rig = _run(body)
        assert rig.ssrcs() == [2, 2, 2, 2, 1, 1]
        assert figures == [(1, (HOST, _port(nat))), (2, None)]
        assert rig.receiver.latches == 1


def test_held_back_packets_of_stale_traffic_never_reach_the_sink_when_the_src_follows() -> None:
    with _senders(2) as (advertised, stale):

        async def body(rig: _Rig) -> None:
            rig.start()
            rig.receiver.expect(rig.base, (HOST, _port(advertised)), (HOST, _port(advertised) + 1))
            for seq in range(5):
                stale.sendto(_rtp(seq, 9), (HOST, rig.base))
            await _settle(rig)
            for seq in range(5):
                advertised.sendto(_rtp(seq, 1), (HOST, rig.base))
                stale.sendto(_rtp(5 + seq, 9), (HOST, rig.base))
            await _settle(rig)
            rig.receiver.drain(rig.base)
            assert rig.receiver.pair_filter(rig.base) == (10, None)

        rig = _run(body)
    assert rig.ssrcs() == [1] * 5


@pytest.fixture
def kernel_stamps() -> Iterator[None]:
    """Receive timestamps switched on in the kernel before the test sends anything: Linux turns them on
    for everyone a moment after the first socket asks (deferred work), and a datagram that arrives
    unstamped is stamped when it is read instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        mmsg.enable_timestamps(sock)
        time.sleep(0.2)
        yield


@pytest.mark.skipif(not mmsg.available(), reason="arrival times before the answer need recvmmsg's kernel stamps")
def test_a_source_heard_before_the_answer_is_never_latched_to(kernel_stamps: None) -> None:
    with _senders(2) as (stale, nat):

        async def body(rig: _Rig) -> None:
            # bound, not started: the answer naming the port has not left yet
            stale.sendto(_rtp(0, 9), (HOST, rig.base))
            await asyncio.sleep(0.05)
            rig.start()
            rig.receiver.expect(rig.base, ("0.0.0.0", 0), ("0.0.0.0", 1))  # an SDP that says nothing
            stale.sendto(_rtp(1, 9), (HOST, rig.base))
            nat.sendto(_rtp(0, 2), (HOST, rig.base))
            await _settle(rig)
            rig.receiver.drain(rig.base)  # the end of the session: the held packets are the SRC's

        rig = _run(body)
    assert rig.ssrcs() == [2]
    assert rig.receiver.foreign == 2


def test_rtcp_is_latched_only_to_the_address_its_rtp_was_latched_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_io, "LATCH_HOLD_S", 0.0)
    with _senders(3) as (nat_rtp, nat_rtcp, other):

        async def body(rig: _Rig) -> None:
            rig.start()
            rig.receiver.expect(rig.base, ("192.0.2.1", 4000), ("192.0.2.1", 4001))
            other.sendto(b"\x81\xc9\x00\x01" + bytes(4), (HOST, rig.base + 1))  # RTP has not latched: no
            await _settle(rig)
            nat_rtp.sendto(_rtp(0, 2), (HOST, rig.base))
            await _settle(rig)
            nat_rtcp.sendto(b"\x81\xc9\x00\x01" + bytes(4), (HOST, rig.base + 1))
            other.sendto(b"\x81\xc9\x00\x01" + bytes(4), (HOST, rig.base + 1))
            await _settle(rig)

        rig = _run(body)
        assert [(p[2], p[4] - rig.base) for p in rig.written] == [(_port(nat_rtp), 0), (_port(nat_rtcp), 1)]
        assert rig.receiver.foreign == 2


def test_a_new_offer_moving_the_source_moves_the_filter() -> None:
    with _senders(2) as (first, second):

        async def body(rig: _Rig) -> None:
            rig.start()
            rig.receiver.expect(rig.base, (HOST, _port(first)), (HOST, _port(first) + 1))
            first.sendto(_rtp(0, 1), (HOST, rig.base))
            await _settle(rig)
            # the same offer again changes nothing; a re-offer from the second source moves the filter
            rig.receiver.expect(rig.base, (HOST, _port(first)), (HOST, _port(first) + 1))
            second.sendto(_rtp(0, 2), (HOST, rig.base))
            await _settle(rig)
            rig.receiver.expect(rig.base, (HOST, _port(second)), (HOST, _port(second) + 1))
            second.sendto(_rtp(1, 2), (HOST, rig.base))
            first.sendto(_rtp(1, 1), (HOST, rig.base))
            await _settle(rig)

        rig = _run(body)
    assert rig.ssrcs() == [1, 2]
    assert rig.receiver.foreign == 2


def test_without_an_expectation_everything_rtp_shaped_is_taken() -> None:
    with _senders(2) as socks:

        async def body(rig: _Rig) -> None:
            rig.start()
            for i, sock in enumerate(socks):
                sock.sendto(_rtp(0, i), (HOST, rig.base))
            await _settle(rig)

        rig = _run(body)
    assert sorted(rig.ssrcs()) == [0, 1] and rig.receiver.foreign == 0


# ---- port pairs -------------------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_released_pair_rests_before_reuse_and_only_resting_pairs_left_is_exhaustion() -> None:
    clock = _Clock()
    ports = PortAllocator(30000, 30005, clock=clock, start=0)
    assert [ports.take(), ports.take()] == [30000, 30002]
    ports.give_back(30000)
    assert ports.take() == 30004
    with pytest.raises(PortsExhausted, match=r"1 resting"):
        ports.take()  # 30000 rests: not handed out, even with nothing else free
    clock.now += PORT_REST_S - 0.001
    with pytest.raises(PortsExhausted):
        ports.take()
    clock.now += 0.002
    assert ports.take() == 30000
    assert (ports.in_use, ports.resting) == (3, 0)


def test_a_pair_set_aside_does_not_rest_and_goes_to_the_back() -> None:
    ports = PortAllocator(30000, 30005, clock=_Clock(), start=0)
    taken = ports.take()
    ports.set_aside(taken)  # another program holds it: no session used it
    assert [ports.take(), ports.take(), ports.take()] == [30002, 30004, 30000]


def test_by_default_a_pair_rests_at_least_30_s() -> None:
    # issue 13: "a closed session's ports rest at least 30 s before reuse", by default (the recorder's too)
    assert PORT_REST_S >= 30.0
    clock = _Clock()
    ports = PortAllocator(30000, 30001, clock=clock)  # one pair, the default rest
    ports.give_back(ports.take())
    clock.now += 29.999
    with pytest.raises(PortsExhausted):
        ports.take()
    clock.now += 0.001
    assert ports.take() == 30000


def test_the_recorder_allocates_from_a_random_place_and_rests_its_pairs_30_s(tmp_path: Path) -> None:
    # what callrec record/serve build (runner.py): no start given, the default rest
    cfg = RecorderConfig(listen_host=HOST, listen_port=0, rtp_first=30000, rtp_last=30199, data_dir=tmp_path)
    allocators = [Recorder(cfg).streams.ports for _ in range(40)]
    assert len({a.take() for a in allocators}) > 1, "every restart would hand out the same ports first"
    port = allocators[0].take()
    allocators[0].give_back(port)
    assert allocators[0].resting == 1 and allocators[0]._rest_s >= 30.0


def test_allocation_starts_at_a_random_place_in_the_range() -> None:
    firsts = {PortAllocator(30000, 30199).take() for _ in range(40)}
    # 100 pairs: 40 allocators all starting at the same pair would happen once in 10**78 runs
    assert len(firsts) > 1 and all(30000 <= p < 30199 and p % 2 == 0 for p in firsts)
    assert PortAllocator(30000, 30009, start=3).take() == 30006


def test_stream_figures_round_trip_in_call_json_and_old_files_still_load() -> None:
    info = CallInfo(call_ids=["c"])
    info.streams.append(Stream(party="A", local_addr=HOST, local_port=30000, foreign_packets=7,
                               latched_addr="198.51.100.7", latched_port=40002))  # fmt: skip
    again = CallInfo.from_json(info.to_json())
    assert again == info
    old = info.to_json()
    for key in ("foreign_packets", "latched_addr", "latched_port"):
        del old["streams"][0][key]
    stream = CallInfo.from_json(old).streams[0]
    assert (stream.foreign_packets, stream.latched_addr, stream.latched_port) == (0, "", 0)


def test_packets_held_for_a_latch_reach_the_tape_early_enough_for_the_mixer() -> None:
    # held packets are written at the end of the hold (at most a tick later), with their true arrival
    # times: the mixer places a stream that late in file order at its true start only while it has not
    # emitted that stretch yet (tests/mix/test_mix_timing.py: first seconds written up to 1.4 s late)
    from callrec.media.mixer import COMMIT_LAG_S
    from callrec.media.timeline import JITTER_DELAY_S

    written_late_at_most = media_io.LATCH_HOLD_S + media_io.TICK_S
    assert written_late_at_most <= 1.4 < COMMIT_LAG_S + JITTER_DELAY_S
