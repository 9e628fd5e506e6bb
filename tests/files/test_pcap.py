"""CaptureReader and PcapWriter, checked against captures written by dpkt (an independent writer)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callrec.errors import CaptureError, ParseError
from callrec.files.pcap import CaptureReader, Datagram, PcapWriter, format_addr, pack_addr

A4, B4 = pack_addr("192.0.2.1"), pack_addr("198.51.100.7")
A6, B6 = pack_addr("2001:db8::1"), pack_addr("2001:db8:1::beef")
TS = 1_700_000_000.25
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"

Frame = tuple[float, bytes]


# -- packets, built with dpkt's classes -----------------------------------------------------------


def udp(payload: bytes = b"hello", sport: int = 40000, dport: int = 40002) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)


def ip4(data: dpkt.Packet | bytes, p: int = 17, src: bytes = A4, dst: bytes = B4, **kw: object) -> dpkt.ip.IP:
    return dpkt.ip.IP(src=src, dst=dst, p=p, ttl=64, data=data, **kw)


def ip6(data: dpkt.Packet | bytes, nxt: int = 17, src: bytes = A6, dst: bytes = B6) -> dpkt.ip6.IP6:
    packet = dpkt.ip6.IP6(src=src, dst=dst, nxt=nxt, hlim=64, data=data)
    packet.plen = len(bytes(data))
    return packet


def ether(ip: dpkt.Packet, **kw: object) -> bytes:
    etype = dpkt.ethernet.ETH_TYPE_IP6 if isinstance(ip, dpkt.ip6.IP6) else dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=etype, data=ip, **kw))


def tcp(seq: int, payload: bytes = b"", flags: int = dpkt.tcp.TH_ACK) -> dpkt.ip.IP:
    return ip4(dpkt.tcp.TCP(sport=5060, dport=5061, seq=seq & 0xFFFFFFFF, flags=flags, data=payload), p=6)


# -- capture files ----------------------------------------------------------------------------------


@contextmanager
def big_endian_writers() -> Iterator[None]:
    """dpkt writes in the host byte order; flip its private switch to write big-endian files."""
    saved = dpkt.pcap.Writer._Writer__le, dpkt.pcapng.Writer._Writer__le
    dpkt.pcap.Writer._Writer__le = dpkt.pcapng.Writer._Writer__le = False
    try:
        yield
    finally:
        dpkt.pcap.Writer._Writer__le, dpkt.pcapng.Writer._Writer__le = saved


def write_pcap(path: Path, frames: list[Frame], linktype: int = 1, nano: bool = False) -> Path:
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=65535, linktype=linktype, nano=nano)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
    return path


def write_pcapng(path: Path, frames: list[Frame], linktype: int = 1) -> Path:
    with open(path, "wb") as f:
        writer = dpkt.pcapng.Writer(f, snaplen=65535, linktype=linktype)
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
    return path


def read(path: Path) -> tuple[list[Datagram], CaptureReader]:
    with CaptureReader(path) as reader:
        return list(reader), reader


def read_one(path: Path) -> Datagram:
    datagrams, reader = read(path)
    assert len(datagrams) == 1, reader.stats
    return datagrams[0]


def assert_hello_v4(d: Datagram) -> None:
    assert d == Datagram(TS, 17, A4, 40000, B4, 40002, b"hello")


# -- link types -------------------------------------------------------------------------------------


def test_ethernet_ipv4_udp(tmp_path: Path) -> None:
    assert_hello_v4(read_one(write_pcap(tmp_path / "c.pcap", [(TS, ether(ip4(udp())))])))


def test_linux_cooked_v1(tmp_path: Path) -> None:
    frame = bytes(dpkt.sll.SLL(type=0, hrd=1, hlen=6, hdr=MAC_A, ethtype=0x0800, data=ip4(udp())))
    assert_hello_v4(read_one(write_pcap(tmp_path / "c.pcap", [(TS, frame)], linktype=113)))


def test_linux_cooked_v2(tmp_path: Path) -> None:
    frame = bytes(dpkt.sll2.SLL2(ethtype=0x86DD, hrd=1, hlen=6, hdr=MAC_A, data=ip6(udp())))
    d = read_one(write_pcap(tmp_path / "c.pcap", [(TS, frame)], linktype=276))
    assert (d.src, d.dst, d.payload) == (A6, B6, b"hello")


@pytest.mark.parametrize("linktype", [101, 12, 14, 228])
def test_raw_ipv4(tmp_path: Path, linktype: int) -> None:
    assert_hello_v4(read_one(write_pcap(tmp_path / "c.pcap", [(TS, bytes(ip4(udp())))], linktype=linktype)))


def test_raw_ipv6_linktype(tmp_path: Path) -> None:
    d = read_one(write_pcap(tmp_path / "c.pcap", [(TS, bytes(ip6(udp())))], linktype=229))
    assert d == Datagram(TS, 17, A6, 40000, B6, 40002, b"hello")


def test_bsd_null_loopback_any_address_family(tmp_path: Path) -> None:
    # AF_INET is 2 everywhere; AF_INET6 is 24, 28 or 30 depending on the BSD, in host byte order
    frames = [
        (TS, struct.pack("<I", 2) + bytes(ip4(udp()))),
        (TS + 1, struct.pack("<I", 30) + bytes(ip6(udp(b"six")))),
    ]
    datagrams, _ = read(write_pcap(tmp_path / "c.pcap", frames, linktype=0))
    assert [(d.src, d.payload) for d in datagrams] == [(A4, b"hello"), (A6, b"six")]


def test_openbsd_loop(tmp_path: Path) -> None:
    frame = struct.pack("!I", 2) + bytes(ip4(udp()))
    assert_hello_v4(read_one(write_pcap(tmp_path / "c.pcap", [(TS, frame)], linktype=108)))


def test_vlan_tag(tmp_path: Path) -> None:
    frame = ether(ip4(udp()), vlan_tags=[dpkt.ethernet.VLANtag8021Q(id=42)])
    assert frame[12:14] == b"\x81\x00"
    assert_hello_v4(read_one(write_pcap(tmp_path / "c.pcap", [(TS, frame)])))


def test_qinq_stacked_tags(tmp_path: Path) -> None:
    tags = [dpkt.ethernet.VLANtag8021Q(id=100), dpkt.ethernet.VLANtag8021Q(id=42)]
    frame = ether(ip4(udp()), vlan_tags=tags)
    assert frame[12:14] == b"\x88\xa8"
    assert_hello_v4(read_one(write_pcap(tmp_path / "c.pcap", [(TS, frame)])))


def test_unsupported_link_type_is_counted_and_warned(tmp_path: Path) -> None:
    datagrams, reader = read(write_pcap(tmp_path / "c.pcap", [(TS, b"\x00" * 40)] * 3, linktype=105))
    assert datagrams == []
    assert reader.stats["unsupported_link"] == 3
    assert reader.warnings == ["link type 105 is not supported: its packets are skipped"]


def test_non_ip_frames_are_counted(tmp_path: Path) -> None:
    arp = bytes(dpkt.ethernet.Ethernet(src=MAC_A, dst=MAC_B, type=0x0806, data=bytes(dpkt.arp.ARP())))
    datagrams, reader = read(write_pcap(tmp_path / "c.pcap", [(TS, arp), (TS, ether(ip4(udp())))]))
    assert len(datagrams) == 1
    assert reader.stats["non_ip"] == 1
    assert reader.stats["packets"] == 2


# -- IP -----------------------------------------------------------------------------------------------


def test_ipv6_udp_over_ethernet(tmp_path: Path) -> None:
    d = read_one(write_pcap(tmp_path / "c.pcap", [(TS, ether(ip6(udp())))]))
    assert d == Datagram(TS, 17, A6, 40000, B6, 40002, b"hello")


def test_ipv6_extension_headers_are_skipped(tmp_path: Path) -> None:
    # hop-by-hop (8 bytes: next=60) then destination options (16 bytes: next=17, PadN)
    hop_by_hop = bytes([60, 0, 1, 4, 0, 0, 0, 0])
    dest_opts = bytes([17, 1, 1, 12]) + bytes(12)
    packet = ip6(hop_by_hop + dest_opts + bytes(udp()), nxt=0)
    d = read_one(write_pcap(tmp_path / "c.pcap", [(TS, bytes(packet))], linktype=101))
    assert (d.src, d.sport, d.payload) == (A6, 40000, b"hello")


def test_ipv4_options(tmp_path: Path) -> None:
    # record-route style padding: four NOPs make the header 24 bytes (IHL 6)
    packet = ip4(udp(), opts=b"\x01\x01\x01\x01", hl=6)
    assert bytes(packet)[0] == 0x46
    assert_hello_v4(read_one(write_pcap(tmp_path / "c.pcap", [(TS, ether(packet))])))


def fragments_of(payload: bytes, size: int, ident: int = 0x1234) -> list[bytes]:
    """An IPv4/UDP datagram cut into fragments carrying ``size`` bytes each (a multiple of 8)."""
    whole = bytes(udp(payload, 5060, 5060))
    pieces = []
    for offset in range(0, len(whole), size):
        more = 1 if offset + size < len(whole) else 0
        pieces.append(ether(ip4(whole[offset : offset + size], id=ident, mf=more, offset=offset // 8)))
    return pieces


def test_ipv4_fragments_in_order(tmp_path: Path) -> None:
    invite = b"INVITE sip:bob@example.com SIP/2.0\r\n" + b"a=rtpmap:8 PCMA/8000\r\n" * 200
    frames = [(TS, f) for f in fragments_of(invite, 1480)]
    assert len(frames) == 4
    datagrams, reader = read(write_pcap(tmp_path / "c.pcap", frames))
    assert [(d.sport, d.dport, d.payload) for d in datagrams] == [(5060, 5060, invite)]
    assert reader.stats["fragments"] == 4
    assert reader.stats["reassembled"] == 1


def test_ipv4_fragments_out_of_order(tmp_path: Path) -> None:
    invite = bytes(range(256)) * 20
    pieces = fragments_of(invite, 1480)
    frames = [(TS, f) for f in [pieces[3], pieces[1], pieces[0], pieces[2]]]
    datagrams, _ = read(write_pcap(tmp_path / "c.pcap", frames))
    assert [d.payload for d in datagrams] == [invite]


def test_incomplete_fragment_sets_are_bounded(tmp_path: Path) -> None:
    # 1000 datagrams that each lost their last fragment: the table must drop old sets, not grow
    frames = [(TS + i, fragments_of(b"x" * 3000, 1480, ident=i)[0]) for i in range(1000)]
    datagrams, reader = read(write_pcap(tmp_path / "c.pcap", frames))
    assert datagrams == []
    assert reader.stats["fragments_dropped"] >= 700


def test_ipv6_fragments(tmp_path: Path) -> None:
    invite = b"v=0\r\n" * 700
    whole = bytes(udp(invite, 5060, 5060))
    frames = []
    for offset in range(0, len(whole), 1232):
        more = 1 if offset + 1232 < len(whole) else 0
        header = struct.pack("!BxHI", 17, offset | more, 0xCAFE)
        frames.append((TS, ether(ip6(header + whole[offset : offset + 1232], nxt=44))))
    frames.reverse()
    datagrams, _ = read(write_pcap(tmp_path / "c.pcap", frames))
    assert [(d.src, d.payload) for d in datagrams] == [(A6, invite)]


def test_malformed_ipv4_header_is_counted_not_raised(tmp_path: Path) -> None:
    bad_ihl = bytearray(bytes(ip4(udp())))
    bad_ihl[0] = 0x43  # header length 12 bytes: impossible
    too_long = bytearray(bytes(ip4(udp())))
    too_long[2:4] = (5000).to_bytes(2, "big")  # claims more bytes than were captured
    frames = [(TS, bytes(bad_ihl)), (TS, bytes(too_long)), (TS, bytes(ip4(udp())))]
    datagrams, reader = read(write_pcap(tmp_path / "c.pcap", frames, linktype=101))
    assert len(datagrams) == 1
    assert reader.stats["malformed"] == 2
    assert reader.warnings == ["2 malformed packets were dropped"]


# -- TCP ----------------------------------------------------------------------------------------------


def test_tcp_retransmission_and_reordering_are_delivered_once_in_order(tmp_path: Path) -> None:
    isn = 0xFFFFFFF0  # the stream wraps around 2**32 on the way
    segments = [
        tcp(isn, flags=dpkt.tcp.TH_SYN),
        tcp(isn + 1, b"INVITE "),
        tcp(isn + 16, b"SIP/2.0\r\n"),  # ahead of a gap
        tcp(isn + 8, b"sip:bob "),  # fills the gap
        tcp(isn + 1, b"INVITE "),  # retransmission of delivered bytes
        tcp(isn + 12, b"bob SIP/2.0\r\nVia"),  # overlaps: only "Via" is new
        tcp(isn + 28),  # a bare ACK
    ]
    frames = [(TS + i, ether(s)) for i, s in enumerate(segments)]
    datagrams, reader = read(write_pcap(tmp_path / "c.pcap", frames))
    assert b"".join(d.payload for d in datagrams) == b"INVITE sip:bob SIP/2.0\r\nVia"
    assert all(d.proto == 6 and d.payload for d in datagrams)
    assert reader.stats["tcp_segments"] == 7


# -- timestamps and file formats ----------------------------------------------------------------------


def test_nanosecond_pcap_timestamps_are_exact(tmp_path: Path) -> None:
    frames = [(1.123456789, ether(ip4(udp()))), (1_700_000_000.123456789, ether(ip4(udp())))]
    datagrams, _ = read(write_pcap(tmp_path / "c.pcap", frames, nano=True))
    assert datagrams[0].ts == 1.123456789
    assert datagrams[1].ts == 1_700_000_000 + 123456789 / 1e9


END_OF_OPTIONS = dpkt.pcapng.PcapngOptionLE(code=0)


def test_pcapng_if_tsresol_timestamps_are_exact(tmp_path: Path) -> None:
    ns = dpkt.pcapng.InterfaceDescriptionBlockLE(
        linktype=1, snaplen=65535, opts=[dpkt.pcapng.PcapngOptionLE(code=9, data=b"\x09"), END_OF_OPTIONS]
    )
    binary = dpkt.pcapng.InterfaceDescriptionBlockLE(  # 0x94: high bit set, units of 2**-20 s
        linktype=101, snaplen=65535, opts=[dpkt.pcapng.PcapngOptionLE(code=9, data=b"\x94"), END_OF_OPTIONS]
    )
    with open(tmp_path / "c.pcapng", "wb") as f:
        writer = dpkt.pcapng.Writer(f, shb=dpkt.pcapng.SectionHeaderBlockLE(), idb=[ns, binary])
        for iface, units, frame in [
            (0, 1_123_456_789, ether(ip4(udp()))),
            (0, 1_700_000_000_123_456_789, ether(ip4(udp()))),
            (1, 3 * 2**20 + 2**19, bytes(ip4(udp()))),
        ]:
            epb = dpkt.pcapng.EnhancedPacketBlockLE(
                iface_id=iface,
                ts_high=units >> 32,
                ts_low=units & 0xFFFFFFFF,
                caplen=len(frame),
                pkt_len=len(frame),
                pkt_data=frame,
            )
            writer.writepkt(epb)
    datagrams, _ = read(tmp_path / "c.pcapng")
    assert [d.ts for d in datagrams] == [1.123456789, 1_700_000_000_123_456_789 / 10**9, 3.5]
    assert all(d.payload == b"hello" for d in datagrams)


def test_pcapng_default_microseconds(tmp_path: Path) -> None:
    assert_hello_v4(read_one(write_pcapng(tmp_path / "c.pcapng", [(TS, ether(ip4(udp())))])))


def test_pcapng_big_endian(tmp_path: Path) -> None:
    with big_endian_writers():
        path = write_pcapng(tmp_path / "c.pcapng", [(TS, ether(ip4(udp())))])
    assert path.read_bytes()[8:12] == b"\x1a\x2b\x3c\x4d"
    assert_hello_v4(read_one(path))


def test_pcapng_simple_and_obsolete_packet_blocks(tmp_path: Path) -> None:
    frame = ether(ip4(udp()))
    pb = dpkt.pcapng.PacketBlockLE(
        ts_high=0, ts_low=int(TS * 1e6) & 0xFFFFFFFF, caplen=len(frame), pkt_len=len(frame), pkt_data=frame
    )
    pb.ts_high = int(TS * 1e6) >> 32
    padded = frame + bytes(-len(frame) % 4)
    spb = struct.pack("<III", 3, 16 + len(padded), len(frame)) + padded + struct.pack("<I", 16 + len(padded))
    buf = io.BytesIO()
    dpkt.pcapng.Writer(buf, linktype=1)
    (tmp_path / "c.pcapng").write_bytes(buf.getvalue() + bytes(pb) + spb)
    datagrams, reader = read(tmp_path / "c.pcapng")
    # a simple packet block has no timestamp: it keeps the previous packet's
    assert [(d.ts, d.payload) for d in datagrams] == [(TS, b"hello"), (TS, b"hello")]
    assert reader.stats["packets"] == 2


def test_big_endian_pcap(tmp_path: Path) -> None:
    with big_endian_writers():
        path = write_pcap(tmp_path / "c.pcap", [(TS, ether(ip4(udp())))])
    assert path.read_bytes()[:4] == b"\xa1\xb2\xc3\xd4"
    assert_hello_v4(read_one(path))


def test_reads_across_chunk_boundaries(tmp_path: Path) -> None:
    # 3.6 MB: records straddle the reader's 1 MiB chunks
    frames = [(TS + i * 0.02, ether(ip4(udp(i.to_bytes(4, "big") + bytes(168))))) for i in range(17_000)]
    datagrams, reader = read(write_pcap(tmp_path / "c.pcap", frames))
    assert [int.from_bytes(d.payload[:4], "big") for d in datagrams] == list(range(17_000))
    assert reader.bytes_read == reader.total_bytes == (tmp_path / "c.pcap").stat().st_size


# -- damage -------------------------------------------------------------------------------------------


def test_truncated_mid_record(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", [(TS + i, ether(ip4(udp()))) for i in range(3)])
    path.write_bytes(path.read_bytes()[:-10])
    datagrams, reader = read(path)
    assert len(datagrams) == 2
    assert reader.truncated
    assert reader.warnings == ["capture is truncated: the last packet is cut off"]


def test_truncated_mid_record_header(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", [(TS, ether(ip4(udp())))])
    path.write_bytes(path.read_bytes() + b"\x00" * 7)
    datagrams, reader = read(path)
    assert len(datagrams) == 1
    assert reader.truncated
    assert reader.warnings == ["capture is truncated: the last packet is cut off"]


def test_truncated_pcapng_block(tmp_path: Path) -> None:
    path = write_pcapng(tmp_path / "c.pcapng", [(TS + i, ether(ip4(udp()))) for i in range(3)])
    path.write_bytes(path.read_bytes()[:-30])
    datagrams, reader = read(path)
    assert len(datagrams) == 2
    assert reader.truncated
    assert reader.warnings == ["capture is truncated: the last packet is cut off"]


def test_oversized_record_marks_the_rest_damaged(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "c.pcap", [(TS, ether(ip4(udp())))])
    good = path.read_bytes()
    path.write_bytes(good + struct.pack("<IIII", 0, 0, 10_000_000, 10_000_000) + bytes(100))
    datagrams, reader = read(path)
    assert len(datagrams) == 1
    assert reader.truncated
    assert reader.warnings == [f"capture is damaged at byte {len(good)}: the rest of the file is skipped"]


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 100, b"Via: SIP/2.0/UDP host\r\nThis is a text file, not a capture.\n", os.urandom(64)],
    ids=["empty", "zeros", "text", "random"],
)
def test_not_a_capture(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "call.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError) as info:
        CaptureReader(path)
    assert str(info.value) == f"{path}: not a pcap or pcapng capture"


def test_capture_header_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "call.pcap"
    path.write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00")
    with pytest.raises(CaptureError, match="capture header is truncated$"):
        CaptureReader(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="No such file or directory$"):
        CaptureReader(tmp_path / "nope.pcap")


PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
PCAPNG_HEADER = bytes.fromhex("0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000")


@settings(max_examples=300, deadline=None)
@given(header=st.sampled_from([PCAP_HEADER, PCAPNG_HEADER]), tail=st.binary(max_size=2000))
def test_random_bytes_after_a_valid_header_never_raise(header: bytes, tail: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.pcap"
        path.write_bytes(header + tail)
        try:
            with CaptureReader(path) as reader:
                for _ in reader:
                    pass
        except CaptureError:
            pass


@settings(max_examples=300, deadline=None)
@given(
    linktype=st.sampled_from([0, 1, 12, 101, 108, 113, 228, 229, 276]),
    frames=st.lists(st.binary(max_size=200), max_size=8),
)
def test_random_frames_never_raise(linktype: int, frames: list[bytes]) -> None:
    # frames that start like IPv4/IPv6 reach the deeper parsers more often than pure noise would
    with tempfile.TemporaryDirectory() as tmp:
        path = write_pcap(Path(tmp) / "fuzz.pcap", [(TS, f) for f in frames], linktype=linktype)
        _, reader = read(path)
        assert reader.stats["packets"] == len(frames)


# -- writer -------------------------------------------------------------------------------------------


def test_writer_round_trip_ipv4_and_ipv6(tmp_path: Path) -> None:
    path = tmp_path / "media.pcap"
    with PcapWriter(path) as writer:
        writer.write(TS, A4, 40000, B4, 40002, b"\x80\x08" + bytes(170))
        writer.write(TS + 0.02, A6, 40000, B6, 40002, b"\x80\x08odd")
    datagrams, _ = read(path)
    assert datagrams == [
        Datagram(TS, 17, A4, 40000, B4, 40002, b"\x80\x08" + bytes(170)),
        Datagram(TS + 0.02, 17, A6, 40000, B6, 40002, b"\x80\x08odd"),
    ]


def test_dpkt_reads_writer_output_with_valid_checksums(tmp_path: Path) -> None:
    path = tmp_path / "media.pcap"
    with PcapWriter(path) as writer:
        writer.write(TS, A4, 5004, B4, 5006, b"rtp4")
        writer.write(TS, A6, 5004, B6, 5006, b"rtp6!")
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == 101
        packets = [dpkt.ip.IP(raw) if raw[0] >> 4 == 4 else dpkt.ip6.IP6(raw) for _, raw in reader]
    v4, v6 = packets
    assert (v4.data.data, v6.data.data) == (b"rtp4", b"rtp6!")
    stored = v4.sum
    v4.sum = 0
    assert dpkt.ip.IP(bytes(v4)).sum == stored  # dpkt recomputes the header checksum
    stored = v6.data.sum
    v6.data.sum = 0
    assert dpkt.ip6.IP6(bytes(v6)).data.sum == stored


def test_tshark_reads_writer_output(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    if tshark is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tshark is required in CI")
        pytest.skip("tshark is not installed")
    path = tmp_path / "media.pcap"
    with PcapWriter(path) as writer:
        writer.write(TS, A4, 5004, B4, 5006, b"rtp4")
        writer.write(TS + 0.5, A6, 5004, B6, 5006, b"rtp6!")
    result = subprocess.run(
        [
            tshark,
            "-r",
            str(path),
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.checksum.status",
            "-e",
            "udp.checksum.status",
            "-e",
            "udp.payload",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = result.stdout.split()
    # checksum status 1 is "good"; 3 is "not present" (the optional IPv4 UDP checksum)
    assert lines == [f"{TS:.9f},1,3,72747034", f"{TS + 0.5:.9f},,1,7274703621"]


def test_writer_append_after_a_cut_off_record(tmp_path: Path) -> None:
    path = tmp_path / "media.pcap"
    with PcapWriter(path) as writer:
        writer.write(TS, A4, 5004, B4, 5006, b"one")
        writer.write(TS + 1, A4, 5004, B4, 5006, b"two")
    path.write_bytes(path.read_bytes()[:-5])  # the process died while writing "two"
    with PcapWriter(path, append=True) as writer:
        writer.write(TS + 2, A4, 5004, B4, 5006, b"three")
    datagrams, reader = read(path)
    assert [d.payload for d in datagrams] == [b"one", b"three"]
    assert not reader.truncated


def test_writer_append_to_an_empty_or_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pcap").write_bytes(b"\xd4\xc3")
    for name in ("empty.pcap", "missing.pcap"):
        with PcapWriter(tmp_path / name, append=True) as writer:
            writer.write(TS, A4, 5004, B4, 5006, b"one")
        assert [d.payload for d in read(tmp_path / name)[0]] == [b"one"]


def test_writer_refuses_to_append_to_another_format(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "eth.pcap", [(TS, ether(ip4(udp())))])
    with pytest.raises(CaptureError, match="link type 1 is not raw IP, cannot append to it$"):
        PcapWriter(path, append=True)


def test_writer_maps_mixed_address_families_to_ipv6(tmp_path: Path) -> None:
    path = tmp_path / "media.pcap"
    with PcapWriter(path) as writer:
        writer.write(TS, A4, 5004, B6, 5006, b"x")
    d = read_one(path)
    assert format_addr(d.src) == "::ffff:192.0.2.1"


def test_writer_rounds_microseconds_up_to_the_next_second(tmp_path: Path) -> None:
    path = tmp_path / "media.pcap"
    with PcapWriter(path) as writer:
        writer.write(1_700_000_000.9999996, A4, 5004, B4, 5006, b"x")
    assert read_one(path).ts == 1_700_000_001.0


# -- addresses ----------------------------------------------------------------------------------------


def test_addresses_round_trip() -> None:
    assert pack_addr("10.1.2.3") == socket.inet_aton("10.1.2.3")
    assert format_addr(pack_addr("10.1.2.3")) == "10.1.2.3"
    assert format_addr(pack_addr("::1")) == "::1"


def test_pack_addr_rejects_a_hostname() -> None:
    with pytest.raises(ParseError, match="^'sip.example.com' is not an IPv4 or IPv6 address$"):
        pack_addr("sip.example.com")


def test_kuznetzov_pcap_with_longer_record_headers(tmp_path: Path) -> None:
    frame = ether(ip4(udp()))
    header = struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    record = struct.pack("<IIII8x", int(TS), 250000, len(frame), len(frame))
    (tmp_path / "c.pcap").write_bytes(header + record + frame)
    assert_hello_v4(read_one(tmp_path / "c.pcap"))


@settings(max_examples=100, deadline=None)
@given(
    src=st.binary(min_size=4, max_size=4),
    dst=st.binary(min_size=4, max_size=4),
    src6=st.binary(min_size=16, max_size=16),
    payload=st.binary(max_size=300),
)
def test_writer_checksums_match_dpkt(src: bytes, dst: bytes, src6: bytes, payload: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "media.pcap"
        with PcapWriter(path) as writer:
            for _ in range(3):  # the IP identification changes per packet
                writer.write(TS, src, 1, dst, 2, payload)
            writer.write(TS, src6, 1, B6, 2, payload)
        with open(path, "rb") as f:
            raws = [raw for _, raw in dpkt.pcap.Reader(f)]
    for raw in raws[:3]:
        v4 = dpkt.ip.IP(raw)
        stored, v4.sum = v4.sum, 0
        assert dpkt.ip.IP(bytes(v4)).sum == stored
    v6 = dpkt.ip6.IP6(raws[3])
    stored, v6.data.sum = v6.data.sum, 0
    assert dpkt.ip6.IP6(bytes(v6)).data.sum == stored


def test_pcapng_sections_may_change_byte_order(tmp_path: Path) -> None:
    little = write_pcapng(tmp_path / "le.pcapng", [(TS, ether(ip4(udp(b"first"))))])
    with big_endian_writers():
        big = write_pcapng(tmp_path / "be.pcapng", [(TS + 1, bytes(ip4(udp(b"second"))))], linktype=101)
    (tmp_path / "c.pcapng").write_bytes(little.read_bytes() + big.read_bytes())
    datagrams, _ = read(tmp_path / "c.pcapng")
    assert [(d.ts, d.payload) for d in datagrams] == [(TS, b"first"), (TS + 1, b"second")]


def test_pcapng_malformed_packets_are_summed_up_in_one_warning(tmp_path: Path) -> None:
    bad = bytearray(bytes(ip4(udp())))
    bad[0] = 0x44
    datagrams, reader = read(write_pcapng(tmp_path / "c.pcapng", [(TS, bytes(bad))] * 2, linktype=101))
    assert datagrams == []
    assert reader.warnings == ["2 malformed packets were dropped"]
