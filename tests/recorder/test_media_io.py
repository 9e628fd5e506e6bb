"""The recorder's media path and its housekeeping parts: recvmmsg batches, port pairs, crash recovery."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import dpkt
import pytest

from callrec.files import tape
from callrec.models import CallInfo, Stream
from callrec.recorder import mmsg
from callrec.recorder.media_io import MediaReceiver
from callrec.recorder.ports import PortAllocator, PortsExhausted
from callrec.recorder.recovery import TapeRegistry
from tests.support.recorder_proc import free_udp_block


def _rtp(seq: int, payload: bytes = b"\xd5" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 0xABCD) + payload


@pytest.mark.skipif(not mmsg.available(), reason="recvmmsg is Linux-only")
def test_batch_receiver_takes_the_whole_queue_with_kernel_times_and_sources() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        mmsg.enable_timestamps(rx)
        tx.bind(("127.0.0.1", 0))
        sender = tx.getsockname()[1]
        before = time.time()
        for seq in range(10):
            tx.sendto(_rtp(seq), rx.getsockname())
        after = time.time()
        batch = mmsg.BatchReceiver(vlen=4, size=256)
        got = [m for _ in range(3) for m in batch.receive(rx.fileno())]
        assert batch.receive(rx.fileno()) == [], "the queue is empty: nothing, and no exception"
    assert [struct.unpack_from("!H", p, 2)[0] for _, _, _, p in got] == list(range(10))
    assert all(src == socket.inet_aton("127.0.0.1") and port == sender for _, src, port, _ in got)
    assert all(before - 0.001 <= ts <= after + 0.001 for ts, _, _, _ in got), (before, [g[0] for g in got], after)


@pytest.mark.skipif(not mmsg.available(), reason="recvmmsg is Linux-only")
def test_batch_receiver_leaves_out_truncated_datagrams() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        tx.sendto(_rtp(1, b"x" * 400), rx.getsockname())
        tx.sendto(_rtp(2), rx.getsockname())
        time.sleep(0.01)
        got = mmsg.BatchReceiver(vlen=8, size=256).receive(rx.fileno())
    assert [struct.unpack_from("!H", p, 2)[0] for _, _, _, p in got] == [2]


def test_port_pairs_are_even_and_reused_last() -> None:
    ports = PortAllocator(30001, 30008, start=0, rest_s=0)  # the random start and the rest: test_port_rest
    assert ports.capacity == 3
    first = [ports.take(), ports.take()]
    assert first == [30002, 30004]
    ports.give_back(30002)
    assert ports.take() == 30006, "a port just released goes to the back of the queue"
    assert ports.take() == 30002
    with pytest.raises(PortsExhausted):
        ports.take()


def test_receiver_writes_rtp_and_drops_what_is_not(tmp_path: Path) -> None:
    base = free_udp_block(2, 40000, 60000)
    written: list[tuple[float, bytes, int, bytes, int, bytes]] = []

    async def run() -> MediaReceiver:
        receiver = MediaReceiver(asyncio.get_running_loop(), "127.0.0.1", tick=0.01)
        receiver.bind(base)
        receiver.start(base, "127.0.0.1", lambda *packet: written.append(packet))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for seq in range(5):
                tx.sendto(_rtp(seq), ("127.0.0.1", base))
            tx.sendto(b"\x81\x00\x00\x00\x00\x00\x00\x00", ("127.0.0.1", base + 1))  # RTCP on port + 1
            for junk in (b"", b"\x80", b"INVITE sip:x SIP/2.0\r\n\r\n", b"\x40" + bytes(20)):
                tx.sendto(junk, ("127.0.0.1", base))
        deadline = time.monotonic() + 5
        while len(written) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        receiver.close(base)
        receiver.close_all()
        return receiver

    receiver = asyncio.run(run())
    assert sorted(p[4] for p in written) == [base] * 5 + [base + 1]
    assert all(p[3] == socket.inet_aton("127.0.0.1") and p[1] == socket.inet_aton("127.0.0.1") for p in written)
    assert (receiver.received, receiver.dropped) == (6, 4)


def _open_tape(registry: TapeRegistry, root: Path, name: str, packets: int) -> Path:
    folder = root / "2026" / "11" / "26" / name
    folder.mkdir(parents=True)
    registry.register(folder)
    info = CallInfo(call_ids=[name], source="siprec", started_at=1.0, recorder=registry.owner)
    info.streams.append(Stream(party="A", local_addr="127.0.0.1", local_port=30000))
    writer = tape.TapeWriter(folder, info)
    for seq in range(packets):
        writer.write(1.0 + seq * 0.02, ("127.0.0.1", 4000), ("127.0.0.1", 30000), _rtp(seq))
    writer.flush()
    return folder


@pytest.mark.slow
def test_recovery_closes_the_tapes_of_a_dead_recorder_and_spares_a_live_ones(tmp_path: Path) -> None:
    root = tmp_path / "tapes"
    # a recorder in another process that dies with its tape open, the last packet half written
    script = (
        "import sys, os; from pathlib import Path; sys.path.insert(0, os.getcwd())\n"
        "from callrec.recorder.recovery import TapeRegistry\n"
        "from tests.recorder.test_media_io import _open_tape\n"
        f"r = TapeRegistry(Path({str(root)!r})); f = _open_tape(r, Path({str(root)!r}), 'dead', 50)\n"
        "open(f / 'media.pcap', 'ab').write(b'\\x01\\x02\\x03')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).parents[2], timeout=60)
    live = TapeRegistry(root)
    mine = _open_tape(live, root, "mine", 5)
    other = TapeRegistry(root)  # another live recorder sharing the folder
    theirs = _open_tape(other, root, "theirs", 5)

    recovered = TapeRegistry(root).recover()

    dead = root / "2026" / "11" / "26" / "dead"
    assert recovered == [dead.resolve()]
    info = tape.read_info(dead)
    assert info.interrupted and not info.closed_cleanly and info.end_reason == "crash" and info.ended_at
    with (dead / "media.pcap").open("rb") as f:
        assert sum(1 for _ in dpkt.pcap.Reader(f)) == 50, "the half-written record is cut, the rest kept"
    for folder in (mine, theirs):
        assert not tape.read_info(folder).interrupted, "a live recorder's tape must not be touched"
    assert sorted(p.name for p in (root / ".open").iterdir()) == ["mine", "theirs"]
    markers = [json.loads(p.read_text()) for p in (root / ".open").iterdir()]
    assert {m["owner"] for m in markers} == {live.owner, other.owner}
    live.close()
    other.close()
    assert not any((root / ".owners").glob(f"{live.owner}*")), "a closed registry removes its lock file"
    assert os.path.exists(root / ".open" / "mine")
