"""Reading a network interface live through the kernel's packet ring (AF_PACKET, TPACKET_V3).

The kernel writes every frame the BPF filter accepts into a ring of large blocks shared with us (mmap),
and hands a block over when it is full or after ``retire_ms``; we poll the socket, copy the block's used
bytes out in one go (one memcpy, so nothing we keep points into the ring), give the block straight back
(``TP_STATUS_KERNEL``) and find its frames. No system call per packet, no copy per packet. Each block
becomes one :class:`FrameBatch`: the bytes and, per frame, where it starts, its captured and wire
lengths and its timestamp, as numpy arrays (what :class:`~callrec.live.frames.FrameDecoder` turns into the
``Datagram`` / ``UdpBlock`` items the mixer's readers give).

The kernel counts what it could not put in the ring (``PACKET_STATISTICS``: packets, drops, and how often
the ring was full, "freezes"); :meth:`RingReader.kernel_stats` adds them up. Setting up needs root or
CAP_NET_RAW. The filter is attached before the socket is bound, so no packet ever passes unfiltered.
An interface that goes down is counted (``link_errors``) and read again when it comes back up; one that is
deleted raises :class:`~callrec.errors.CaptureError`.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from callrec.config import ConfigError
from callrec.errors import CaptureError
from callrec.live.bpf import compile_filter

# <linux/if_packet.h>, <linux/filter.h>, <asm-generic/socket.h>
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
ETH_P_ALL = 3
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
# a V3 ring's frames have any length; tp_frame_size only has to divide the block (the kernel checks it)
FRAME_SIZE = 2048

# interface hardware types (/sys/class/net/IF/type) -> the link type of the frames a SOCK_RAW socket gets
ARPHRD_LOOPBACK = 772
ARPHRD_LINKTYPES = {1: 1, ARPHRD_LOOPBACK: 1, 65534: 101}  # Ethernet, loopback (a zero Ethernet header), raw IP (tun)

# frames the same distance apart in a row before the rest of the run is checked at once with numpy
SAME_STRIDE_RUN = 4

_U32 = struct.Struct("=I")
_REQ3 = struct.Struct("=7I")  # struct tpacket_req3
_STATS3 = struct.Struct("=3I")  # struct tpacket_stats_v3
_MREQ = struct.Struct("=iHH8s")  # struct packet_mreq
_FPROG = struct.Struct("@HP")  # struct sock_fprog: length, pointer to the instructions
# struct tpacket_block_desc + tpacket_hdr_v1, up to what we read: status, packets, first packet's offset, used
_BLOCK = struct.Struct("=8xIIII")

IntArray = npt.NDArray[np.int64]
LITTLE_ENDIAN = sys.byteorder == "little"


@dataclass(slots=True)
class KernelStats:
    """The ring's counters since it was opened: packets the filter accepted (``packets``, drops included),
    those lost because the ring was full (``drops``), and how often it filled up (``freezes``)."""

    packets: int = 0
    drops: int = 0
    freezes: int = 0


class FrameBatch:
    """The frames of one ring block, in arrival order.

    ``buf`` holds the block's bytes; per frame, ``frame`` is where the link-layer frame starts in ``buf``,
    ``caplen`` how much of it was captured, ``wirelen`` its length on the wire, ``ts`` the kernel's receive
    time (seconds since the epoch) and ``vlan`` the 802.1Q tag the interface took off (-1: none).
    """

    __slots__ = ("buf", "frame", "caplen", "wirelen", "ts", "vlan")

    def __init__(
        self, buf: bytes, frame: IntArray, caplen: IntArray, wirelen: IntArray, ts: npt.NDArray[np.float64],
        vlan: IntArray,
    ) -> None:  # fmt: skip
        self.buf = buf
        self.frame = frame
        self.caplen = caplen
        self.wirelen = wirelen
        self.ts = ts
        self.vlan = vlan

    def __len__(self) -> int:
        return len(self.frame)

    def frames(self) -> Iterator[tuple[float, bytes]]:
        """(timestamp, frame bytes) of each frame: the slow, simple view."""
        buf = self.buf
        for at, size, ts in zip(self.frame.tolist(), self.caplen.tolist(), self.ts.tolist(), strict=True):
            yield ts, buf[at : at + size]


def interface_hwtype(interface: str) -> int:
    """``interface``'s hardware type (ARPHRD_*); ConfigError when there is no such interface."""
    try:
        socket.if_nametoindex(interface)
        return int(Path("/sys/class/net", interface, "type").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"capture interface {interface!r}: there is no network interface of that name.") from exc


def interface_linktype(interface: str) -> int:
    """The link type of ``interface``'s frames; ConfigError when it does not exist or is of a kind not read."""
    hwtype = interface_hwtype(interface)
    linktype = ARPHRD_LINKTYPES.get(hwtype)
    if linktype is None:
        raise ConfigError(
            f"capture interface {interface!r}: its hardware type {hwtype} is not one callrec reads "
            "(Ethernet, loopback or raw IP)."
        )
    return linktype


def frame_offsets(buf: bytes, words: npt.NDArray[np.uint32], first: int, count: int) -> IntArray:
    """Where each of the ``count`` frame headers of a copied block starts, following ``tp_next_offset``.

    Frames are found one after the other, but once a few in a row were the same distance apart (RTP of one
    codec), the rest of the run is checked at once: each next header sits one stride further on.
    """
    parts: list[IntArray] = []
    one_by_one: list[int] = []
    next_at = _U32.unpack_from
    p, left, same, prev = first, count, 0, -1
    while left > 0:
        one_by_one.append(p)
        left -= 1
        (stride,) = next_at(buf, p)
        p += stride
        same = same + 1 if stride == prev else 0
        prev = stride
        if same < SAME_STRIDE_RUN or not stride or not left:
            continue
        at = p + stride * np.arange(min(left, (len(buf) - p) // stride), dtype=np.int64)
        if not len(at):
            continue
        nexts = words[at >> 2]
        differ = np.flatnonzero(nexts != stride)
        run = int(differ[0]) + 1 if len(differ) else len(at)  # the first that differs is still a frame
        parts += [np.array(one_by_one, np.int64), at[:run]]
        one_by_one = []
        left -= run
        p = int(at[run - 1]) + int(nexts[run - 1])
        same, prev = 0, -1
    parts.append(np.array(one_by_one, np.int64))
    return np.concatenate(parts)


def frames_of_block(buf: bytes, first: int, count: int) -> FrameBatch:
    """The ``count`` frames of a copied block whose first frame header is at ``first``."""
    words = np.frombuffer(buf, np.uint32, len(buf) // 4)
    at = frame_offsets(buf, words, first, count)
    # frame headers are 8-byte aligned (TPACKET_ALIGN / V3_ALIGNMENT): their 32-bit fields are elements of
    # one uint32 view of the block
    w = at >> 2
    sec, nsec = words[w + 1].astype(np.int64), words[w + 2].astype(np.float64)
    status = words[w + 5]
    mac = (words[w + 6] & 0xFFFF) if LITTLE_ENDIAN else (words[w + 6] >> 16)  # tp_mac, the u16 before tp_net
    tci = (words[w + 8] & 0x0FFF).astype(np.int64)
    vlan = np.where(status & TP_STATUS_VLAN_VALID, tci, -1)
    return FrameBatch(
        buf, at + mac.astype(np.int64), words[w + 3].astype(np.int64), words[w + 4].astype(np.int64),
        sec + nsec * 1e-9, vlan,
    )  # fmt: skip


class RingReader:
    """An interface read through a TPACKET_V3 ring, with an optional BPF filter (tcpdump's syntax).

    ``block_size`` (a power of two, at least a page) times ``block_count`` is the kernel memory the ring
    takes; it holds what arrives while we are busy elsewhere. ``retire_ms`` is the longest a partly
    filled block waits before the kernel hands it over. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        interface: str,
        bpf: str = "",
        *,
        block_size: int = 4 << 20,
        block_count: int = 64,
        retire_ms: int = 50,
        promiscuous: bool = True,
    ) -> None:
        if block_size < mmap.PAGESIZE or block_size & (block_size - 1) or block_size < FRAME_SIZE:
            raise ConfigError(f"capture ring: the block size {block_size} is not a power of two of a page or more.")
        if block_count < 1:
            raise ConfigError("capture ring: it needs at least one block.")
        self.interface = interface
        self.linktype = interface_linktype(interface)
        program = compile_filter(bpf, self.linktype) if bpf.strip() else b""
        self.block_size = block_size
        self.block_count = block_count
        self.stats = KernelStats()
        # how often the kernel reported the interface down (ENETDOWN), and the last such error
        self.link_errors = 0
        self.last_error = ""
        self._index = 0
        self._closed = False
        self._lock = threading.Lock()
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing comes in yet
        except PermissionError as exc:
            raise ConfigError(f"capturing on {interface!r} needs root or the CAP_NET_RAW capability.") from exc
        self._mm: mmap.mmap | None = None
        try:
            self._set_up(program, retire_ms, promiscuous)
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN | select.POLLERR)

    def _set_up(self, program: bytes, retire_ms: int, promiscuous: bool) -> None:
        sock, size, count = self._sock, self.block_size, self.block_count
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        if program:
            # the kernel reads the instructions through a pointer, during the call
            code = ctypes.create_string_buffer(program, len(program))
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _FPROG.pack(len(program) // 8, ctypes.addressof(code)))
        frames = size // FRAME_SIZE * count
        try:
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _REQ3.pack(size, count, FRAME_SIZE, frames, retire_ms, 0, 0))
            self._mm = mmap.mmap(sock.fileno(), size * count, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise ConfigError(
                f"capture ring of {count} blocks of {size} bytes cannot be set up: {exc.strerror or exc}."
            ) from exc
        try:
            sock.bind((self.interface, ETH_P_ALL))
        except OSError as exc:
            raise ConfigError(f"capture interface {self.interface!r} cannot be read: {exc.strerror or exc}.") from exc
        if interface_hwtype(self.interface) == ARPHRD_LOOPBACK:
            # loopback hands every packet to the taps twice, going out and coming in: keep one
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if promiscuous:
            index = socket.if_nametoindex(self.interface)
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, _MREQ.pack(index, PACKET_MR_PROMISC, 0, b""))

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, timeout_s: float) -> FrameBatch | None:
        """The next block's frames, waiting up to ``timeout_s`` for the kernel to hand one over; None if it
        did not (or the reader is closed)."""
        mm = self._mm
        if mm is None or self._closed:
            return None
        off = self._index * self.block_size
        status, count, first, used = _BLOCK.unpack_from(mm, off)
        if not status & TP_STATUS_USER:
            events = self._poll.poll(max(0, int(timeout_s * 1000)))
            if self._closed:
                return None
            if any(ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL) for _, ev in events):
                self._socket_error()
            status, count, first, used = _BLOCK.unpack_from(mm, off)
            if not status & TP_STATUS_USER:
                return None
        used = min(self.block_size, (used + 15) & ~15)
        buf = mm[off : off + used]
        _U32.pack_into(mm, off + 8, TP_STATUS_KERNEL)  # the block is the kernel's again
        self._index = (self._index + 1) % self.block_count
        return frames_of_block(buf, first, count)

    def _socket_error(self) -> None:
        """The kernel flagged the socket: the interface went down (counted; reading goes on when it comes
        back up) or away (CaptureError)."""
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # reading it clears it
        try:
            socket.if_nametoindex(self.interface)
        except OSError as exc:
            raise CaptureError(f"capture interface {self.interface!r} is gone.") from exc
        if code:
            self.link_errors += 1
            self.last_error = os.strerror(code)

    def batches(self, stop: threading.Event, *, poll_s: float = 0.2) -> Iterator[FrameBatch]:
        """Every block's frames until ``stop`` is set (checked at least every ``poll_s`` seconds)."""
        while not stop.is_set() and not self._closed:
            batch = self.read(poll_s)
            if batch is not None and len(batch):
                yield batch

    def kernel_stats(self) -> KernelStats:
        """The kernel's counters since the ring was opened (read, and reset, from the socket each call)."""
        with self._lock:
            if not self._closed:
                raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size)
                packets, drops, freezes = _STATS3.unpack(raw)
                self.stats.packets += packets
                self.stats.drops += drops
                self.stats.freezes += freezes
            return KernelStats(self.stats.packets, self.stats.drops, self.stats.freezes)

    def close(self) -> None:
        """Read the counters one last time, unmap the ring and close the socket (once; later calls do nothing)."""
        if self._closed:
            return
        try:
            if self._mm is not None:
                self.kernel_stats()
        except OSError:
            pass
        with self._lock:
            self._closed = True
            if self._mm is not None:
                self._mm.close()
                self._mm = None
            self._sock.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def cpu_seconds() -> float:
    """This process's user + system CPU time so far (for the bench and the reader's own figures)."""
    times = os.times()
    return times.user + times.system
