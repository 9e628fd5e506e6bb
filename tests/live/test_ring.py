"""The live ring reader on a veth pair: exactly the frames the BPF filter takes, in order, with their kernel
timestamps, decoded as the capture file readers decode; the drop counter; stopping; bad settings.

The sender runs in its own network namespace (``conftest.Veth``); the reader reads the veth end in the test's
namespace. Tests of the settings alone need no root.
"""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from callrec.config import ConfigError
from callrec.errors import CaptureError
from callrec.files.pcap import UdpBlock
from callrec.live.bpf import compile_filter, instructions
from callrec.live.frames import FrameDecoder
from callrec.live.ring import FrameBatch, RingReader
from callrec.wire.netparse import PROTO_UDP, Datagram, pack_addr
from tests.live.conftest import Veth, require_root, run

PORT = 40000
READ_TIMEOUT_S = 15.0
POLL_S = 0.1
# a kernel timestamp may sit a little before time.time() read just before sending (clock granularity)
TS_SLACK_S = 0.5


def read_datagrams(ring: RingReader, decoder: FrameDecoder, want: int) -> list[Datagram]:
    """Read until ``want`` datagrams came (or READ_TIMEOUT_S passed), then a little longer to catch extras."""
    got: list[Datagram] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    for _ in range(int(READ_TIMEOUT_S / POLL_S) + 10):
        if len(got) >= want or time.monotonic() > deadline:
            break
        batch = ring.read(POLL_S)
        if batch is not None:
            got += decoder.datagrams(batch)
    for _ in range(3):  # a few more block timeouts: nothing else may come
        batch = ring.read(POLL_S)
        if batch is not None:
            got += decoder.datagrams(batch)
    return got


def check_times(got: list[Datagram], before: float, after: float) -> None:
    times = [d.ts for d in got]
    assert times == sorted(times)
    assert before - TS_SLACK_S <= times[0] and times[-1] <= after + TS_SLACK_S


@pytest.mark.slow
def test_the_ring_gives_exactly_what_the_filter_takes_in_order(veth: Veth) -> None:
    total = 3000
    code = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({total}):
    s.sendto(b"%06d" % i + bytes(166), ({veth.ip!r}, {PORT} if i % 3 != 2 else {PORT + 1}))
"""
    want = [i for i in range(total) if i % 3 != 2]
    with RingReader(veth.interface, f"udp and dst port {PORT}", block_size=1 << 16, block_count=64,
                    retire_ms=20) as ring:  # fmt: skip
        decoder = FrameDecoder(ring.linktype)
        before = time.time()
        veth.send(code)
        after = time.time()
        got = read_datagrams(ring, decoder, len(want))
        kernel = ring.kernel_stats()
    assert [int(d.payload[:6]) for d in got] == want
    assert {(d.proto, d.src, d.dst, d.dport, len(d.payload)) for d in got} == {
        (PROTO_UDP, pack_addr(veth.peer_ip), pack_addr(veth.ip), PORT, 172)
    }
    check_times(got, before, after)
    assert (kernel.packets, kernel.drops, kernel.freezes) == (len(want), 0, 0)
    assert decoder.stats["packets"] == decoder.stats["datagrams"] == len(want)
    assert decoder.stats["malformed"] == 0


@pytest.mark.slow
def test_ipv6_and_fragments_go_through_the_general_decoder_in_order(veth: Veth) -> None:
    code = f"""
import socket
v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(60):
    size = 3000 if i % 5 == 4 else 40
    body = b"%06d" % i + bytes([i]) * (size - 6)
    if i % 2:
        v6.sendto(body, ({veth.ip6!r}, {PORT}))
    else:
        v4.sendto(body, ({veth.ip!r}, {PORT}))
    v4.sendto(b"excluded", ({veth.ip!r}, 9))
"""
    sent = [(i % 2, b"%06d" % i + bytes([i]) * ((3000 if i % 5 == 4 else 40) - 6)) for i in range(60)]
    with RingReader(veth.interface, "udp and not dst port 9", block_size=1 << 16, block_count=16,
                    retire_ms=20) as ring:  # fmt: skip
        decoder = FrameDecoder(ring.linktype)
        before = time.time()
        veth.send(code)
        after = time.time()
        got = read_datagrams(ring, decoder, len(sent))
        kernel = ring.kernel_stats()
    assert [(len(d.src) == 16, d.payload) for d in got] == sent
    assert {(d.src, d.dst) for d in got} == {
        (pack_addr(veth.peer_ip), pack_addr(veth.ip)), (pack_addr(veth.peer_ip6), pack_addr(veth.ip6))
    }
    check_times(got, before, after)
    assert kernel.drops == 0
    assert decoder.stats["reassembled"] == 12  # every fifth datagram, 3000 bytes, in fragments
    assert decoder.stats["malformed"] == 0


@pytest.mark.slow
def test_plain_ipv4_udp_comes_as_blocks_of_the_mixers_kind(veth: Veth) -> None:
    code = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(200):
    s.sendto(b"%06d" % i, ({veth.ip!r}, {PORT}))
"""
    with RingReader(veth.interface, f"udp port {PORT}", block_size=1 << 20, block_count=4, retire_ms=20) as ring:
        decoder = FrameDecoder(ring.linktype)
        veth.send(code)
        batches: list[FrameBatch] = []
        for _ in range(int(READ_TIMEOUT_S / POLL_S)):
            batch = ring.read(POLL_S)
            if batch is not None:
                batches.append(batch)
            if sum(map(len, batches)) >= 200:
                break
    items = [item for batch in batches for item in decoder.items(batch)]
    assert items and all(type(item) is UdpBlock for item in items)
    payloads = [item.datagram(i).payload for item in items if isinstance(item, UdpBlock) for i in range(len(item))]
    assert payloads == [b"%06d" % i for i in range(200)]
    frames = [frame for batch in batches for _, frame in batch.frames()]
    assert len(frames) == 200 and all(frame.endswith(b"%06d" % i) for i, frame in enumerate(frames))
    assert all((batch.vlan == -1).all() and (batch.caplen == batch.wirelen).all() for batch in batches)


def udp_frame(dst_mac: bytes, vlan: int, src: str, dst: str, payload: bytes) -> bytes:
    """An Ethernet frame, 802.1Q-tagged unless ``vlan`` is -1, carrying one IPv4/UDP datagram."""
    udp = struct.pack("!HHHH", 5004, PORT, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, pack_addr(src), pack_addr(dst))
    words = sum(struct.unpack("!10H", header))
    words = (words & 0xFFFF) + (words >> 16)
    header = header[:10] + struct.pack("!H", ~((words & 0xFFFF) + (words >> 16)) & 0xFFFF) + header[12:]
    tag = struct.pack("!HH", 0x8100, vlan) if vlan >= 0 else b""
    return dst_mac + bytes.fromhex("020000000002") + tag + b"\x08\x00" + header + udp


@pytest.mark.slow
def test_a_vlan_tag_the_kernel_took_off_is_kept_beside_the_frame(veth: Veth) -> None:
    # tagged and untagged frames mixed, as a trunk mirrored to us gives them: the kernel moves the tag out of
    # the frame before any capture sees it; the ring keeps it per frame and the frame decodes as untagged
    mac = bytes.fromhex(Path(f"/sys/class/net/{veth.interface}/address").read_text().strip().replace(":", ""))
    frames = [udp_frame(mac, 100 if i % 2 else -1, veth.peer_ip, veth.ip, b"%06d" % i) for i in range(20)]
    code = f"""
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind(({veth.peer!r}, 0))
for frame in {frames!r}:
    s.send(frame)
"""
    with RingReader(veth.interface, f"udp and dst port {PORT}", block_size=1 << 16, block_count=4,
                    retire_ms=20) as ring:  # fmt: skip
        decoder = FrameDecoder(ring.linktype)
        veth.send(code)
        batches: list[FrameBatch] = []
        for _ in range(int(READ_TIMEOUT_S / POLL_S)):
            batch = ring.read(POLL_S)
            if batch is not None:
                batches.append(batch)
            if sum(map(len, batches)) >= 20:
                break
    assert [v for batch in batches for v in batch.vlan.tolist()] == [100 if i % 2 else -1 for i in range(20)]
    got = [d for batch in batches for d in decoder.datagrams(batch)]
    assert [(d.payload, d.sport, d.dport) for d in got] == [(b"%06d" % i, 5004, PORT) for i in range(20)]


@pytest.mark.slow
def test_the_drop_counter_counts_what_a_full_ring_loses(veth: Veth) -> None:
    total = 500
    code = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range({total}):
    s.sendto(b"%06d" % i + bytes(200), ({veth.ip!r}, {PORT}))
"""
    # two one-page blocks hold a few dozen of these frames: the rest is lost while nobody reads
    with RingReader(veth.interface, f"udp and dst port {PORT}", block_size=4096, block_count=2,
                    retire_ms=20) as ring:  # fmt: skip
        decoder = FrameDecoder(ring.linktype)
        veth.send(code)
        got = read_datagrams(ring, decoder, total)
        kernel = ring.kernel_stats()
    assert 0 < len(got) < total
    assert kernel.drops > 0 and kernel.freezes > 0
    assert kernel.packets == total == len(got) + kernel.drops
    numbers = [int(d.payload[:6]) for d in got]
    assert numbers == sorted(numbers) and numbers[0] == 0


@pytest.mark.slow
def test_the_reader_stops_when_told_and_closes_once(veth: Veth) -> None:
    ring = RingReader(veth.interface, "udp", block_size=1 << 16, block_count=4, retire_ms=20)
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    try:
        timer.start()
        assert list(ring.batches(stop, poll_s=POLL_S)) == []
        assert stop.is_set()
    finally:
        timer.cancel()
        ring.close()
    ring.close()
    assert ring.read(POLL_S) is None
    assert list(ring.batches(threading.Event())) == []
    assert ring.kernel_stats().drops == 0


# -- settings: no root needed ------------------------------------------------------------------------


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and ". " not in message[:-1]


@pytest.mark.parametrize("use_libpcap", [True, False], ids=["libpcap", "tcpdump"])
@pytest.mark.parametrize("expression", ["udp and", "port 99999", "udp port sip and host"])
def test_a_bad_filter_is_one_sentence(expression: str, use_libpcap: bool) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_filter(expression, use_libpcap=use_libpcap)
    message = str(caught.value)
    assert message.startswith(f"capture filter {expression!r} is not valid: ") and one_sentence(message)


def test_a_bad_filter_stops_the_reader_before_it_opens_anything() -> None:
    with pytest.raises(ConfigError, match="capture filter 'udp and' is not valid: syntax error"):
        RingReader("lo", "udp and")


@pytest.mark.parametrize("expression", ["udp", "udp and dst port 40000", "ip6 or (vlan and udp)", "tcp port 5060"])
def test_libpcap_and_tcpdump_compile_the_same_program(expression: str) -> None:
    program = compile_filter(expression)
    assert program == compile_filter(expression, use_libpcap=False)
    code, _, _, snaplen = instructions(program)[-1]
    assert code == 0x06 and snaplen == 0  # the last instruction rejects; accepting returns the snap length


def test_bad_ring_settings_name_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="there is no network interface of that name"):
        RingReader("no-such-if0")
    with pytest.raises(ConfigError, match="is not a power of two"):
        RingReader("lo", block_size=3 << 20)
    with pytest.raises(ConfigError, match="at least one block"):
        RingReader("lo", block_count=0)


@pytest.mark.slow
def test_an_interface_going_down_and_up_is_read_again_and_one_deleted_is_an_error(veth: Veth) -> None:
    code = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(10):
    s.sendto(b"%06d" % i, ({veth.ip!r}, {PORT}))
"""
    with RingReader(veth.interface, f"udp and dst port {PORT}", block_size=1 << 16, block_count=4,
                    retire_ms=20) as ring:  # fmt: skip
        decoder = FrameDecoder(ring.linktype)
        run("ip", "link", "set", veth.interface, "down")
        assert ring.read(POLL_S) is None
        assert ring.link_errors == 1 and ring.last_error
        run("ip", "link", "set", veth.interface, "up")
        veth.send(code)
        got = read_datagrams(ring, decoder, 10)
        assert [d.payload for d in got] == [b"%06d" % i for i in range(10)]
        run("ip", "link", "del", veth.interface)
        with pytest.raises(CaptureError, match=f"capture interface '{veth.interface}' is gone"):
            for _ in range(10):
                ring.read(POLL_S)


def test_loopback_gives_each_packet_once() -> None:
    require_root()
    token = secrets.token_bytes(8)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with RingReader("lo", "udp and dst host 127.0.0.1 and dst port 9", block_size=1 << 16, block_count=4,
                        retire_ms=20) as ring:  # fmt: skip
            decoder = FrameDecoder(ring.linktype)
            for i in range(20):
                sender.sendto(token + b"%06d" % i, ("127.0.0.1", 9))
            got = [d for d in read_datagrams(ring, decoder, 20) if d.payload.startswith(token)]
    finally:
        sender.close()
    assert [d.payload[8:] for d in got] == [b"%06d" % i for i in range(20)]
