"""Receiving live RTP/RTCP: one UDP socket per port, every datagram handed on with its arrival time.

This is the recorder's hot path (2000 calls are 200,000 packets a second on one core), so sockets are
not read one event at a time. Every ``tick`` seconds one ``epoll`` call lists the sockets with data and
one ``recvmmsg`` call per socket takes its whole queue, each datagram stamped by the kernel on arrival
(see ``mmsg``). Where ``recvmmsg`` is missing the sockets are read one datagram at a time instead.

Each socket takes datagrams only from the source the SRC's SDP advertised for it (``expect``): a datagram
from anywhere else is compared twice (address, port) and goes to ``_other``, off the common path. There
an SRC that sends from elsewhere (NAT, asymmetric RTP) is latched to, and everything else is dropped and
counted (``foreign``): after a restart, a media proxy still forking an old call to our ports must not be
heard in a new call. The rules, per RTP socket:

- the advertised source is always taken, and once it has sent, nothing else is;
- while it has not, the first other source is latched to, unless it sent before our answer named the
  port (no SRC of this session could know it then: it is stale traffic). Its packets are held back for
  ``LATCH_HOLD_S`` after the answer, so that stale traffic already flowing when the session starts never
  reaches the tape when the SRC's own packets follow; they are written (with their arrival times) once
  the latch is made;
- when the advertised source appears later, it takes over and the latched one is dropped from then on.

An RTCP socket takes its advertised source (RTP port + 1, or ``a=rtcp``), or latches to a source on the
address its RTP socket latched to: RTCP is only latched where the RTP proved the SDP wrong.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from callrec.errors import ParseError
from callrec.recorder import mmsg
from callrec.wire.netparse import format_addr, pack_addr

log = logging.getLogger("callrec.recorder")

# (arrival time, src packed, src port, dst packed, dst port, payload)
MediaSink = Callable[[float, bytes, int, bytes, int, bytes], None]

RECV_BUFFER_BYTES = 1 << 20
MAX_DATAGRAM_BYTES = 65535
MIN_RTCP_BYTES = 8
RTP_VERSION_BITS = 0x80
TICK_S = 0.1
SLICE_SOCKETS = 256
V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
# how long packets of a source other than the advertised one are held back after the answer, in case the
# SRC's own packets follow (then they were stale traffic); at 50 packets/s at most MAX_HELD are held
LATCH_HOLD_S = 1.0
MAX_HELD = 100
MAX_TAINTED = 64  # sources seen before the answer, remembered per socket

Source = tuple[bytes, int]  # packed address, port


@dataclass(slots=True, eq=False)
class _Port:
    sock: socket.socket
    port: int
    dst: bytes = b""
    sink: MediaSink | None = None
    # the source filter: ``want`` is the source taken on the fast path (the advertised one once it has
    # sent, or the one latched to); ``filtered`` False takes everything (no ``expect`` yet)
    filtered: bool = False
    want_addr: bytes = b""
    want_port: int = -1
    advertised: Source = (b"", -1)
    advertised_seen: bool = False
    candidate: Source | None = None  # the first other source: the only one that may be latched to
    latched: Source | None = None
    held: list[tuple[float, bytes, int, bytes]] = field(default_factory=list)
    opened_at: float = 0.0  # wall clock of ``start``: the answer naming the port leaves right after
    hold_until: float = 0.0
    tainted: set[Source] = field(default_factory=set)
    foreign: int = 0
    foreign_from: Source | None = None
    rtp: _Port | None = None  # on an RTCP socket: the RTP socket of its pair


class MediaReceiver:
    """Binds RTP/RTCP port pairs on one address and feeds what arrives to each pair's sink.

    A datagram that is not RTP or RTCP version 2 (too short, another version) never reaches a tape; it
    is dropped and counted in ``dropped``. One from a source the pair does not take (see the module
    docstring and ``expect``) is dropped and counted in ``foreign`` (and per pair, ``pair_filter``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, bind_host: str, tick: float = TICK_S) -> None:
        self._loop = loop
        self._bind_host = bind_host
        self._family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self._ports: dict[int, _Port] = {}
        self._by_fd: dict[int, _Port] = {}
        self._epoll = select.epoll()
        self._batch = mmsg.BatchReceiver() if mmsg.available() else None
        self._buf = bytearray(MAX_DATAGRAM_BYTES)
        self._view = memoryview(self._buf)
        self._tick = tick
        self._timer: asyncio.TimerHandle | None = loop.call_later(tick, self._on_tick)
        self.received = 0
        self.dropped = 0
        self.foreign = 0
        self.latches = 0
        self._holding: set[_Port] = set()  # sockets holding packets back (see _other)

    def bind(self, port: int) -> None:
        """Bind ``port`` (RTP) and ``port + 1`` (RTCP); ``OSError`` when either is taken.

        Nothing is read until ``start``: what arrives in between waits in the kernel's socket buffer.
        """
        opened: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
                opened.append(sock)
                if self._family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
                if self._batch is not None:
                    mmsg.enable_timestamps(sock)
                sock.setblocking(False)
                sock.bind((self._bind_host, p))
        except OSError:
            for sock in opened:
                sock.close()
            raise
        rtp = self._ports[port] = _Port(opened[0], port)
        self._ports[port + 1] = _Port(opened[1], port + 1, rtp=rtp)

    def start(self, port: int, advertised: str, sink: MediaSink) -> None:
        """Hand every datagram of a bound pair to ``sink``; ``advertised`` is the destination on the tape."""
        dst = pack_addr(advertised)
        for p in (port, port + 1):
            entry = self._ports.get(p)
            if entry is not None and entry.sink is None:
                entry.dst, entry.sink = dst, sink
                entry.opened_at = entry.hold_until = time.time()
                fd = entry.sock.fileno()
                self._by_fd[fd] = entry
                self._epoll.register(fd, select.EPOLLIN)

    def expect(self, port: int, rtp: tuple[str, int], rtcp: tuple[str, int]) -> None:
        """Take packets on a started pair only from the sources the SRC advertised (address, port) for its
        RTP and its RTCP; called again on every offer, it changes nothing unless a source changed.

        A changed source starts over: packets held from another source are written (nothing came from the
        advertised one), the latch is forgotten, and another source is held back ``LATCH_HOLD_S`` from now.
        An address that is not an IP address (a host name) never matches: the SRC is latched to.
        """
        for p, (host, sport) in ((port, rtp), (port + 1, rtcp)):
            entry = self._ports.get(p)
            if entry is None or entry.sink is None:
                continue
            source = (_packed_or_nothing(host), sport)
            if entry.filtered and entry.advertised == source:
                continue
            if entry.held:
                self._latch(entry)
            entry.filtered, entry.advertised, entry.advertised_seen = True, source, False
            # the fast path takes the advertised source only once ``_other`` has seen it come
            entry.want_addr, entry.want_port = b"", -1
            entry.candidate = entry.latched = None
            entry.hold_until = max(entry.opened_at, time.time()) + LATCH_HOLD_S

    def pair_filter(self, port: int) -> tuple[int, tuple[str, int] | None]:
        """A pair's packets dropped as foreign, and the source its RTP socket is latched to now (if any)."""
        rtp, rtcp = self._ports.get(port), self._ports.get(port + 1)
        foreign = (rtp.foreign if rtp is not None else 0) + (rtcp.foreign if rtcp is not None else 0)
        latched = rtp.latched if rtp is not None else None
        return foreign, (format_addr(latched[0]), latched[1]) if latched is not None else None

    def held(self, port: int) -> int:
        """Packets held back on a pair while a latch is decided (see ``_other``)."""
        found = (self._ports.get(p) for p in (port, port + 1))
        return sum(len(e.held) for e in found if e is not None)

    def foreign_sources(self, port: int) -> list[tuple[str, int]]:
        """The last source dropped as foreign on each socket of a pair (for the log)."""
        found = (self._ports.get(p) for p in (port, port + 1))
        return [(format_addr(e.foreign_from[0]), e.foreign_from[1]) for e in found if e and e.foreign_from]

    def drain(self, port: int) -> None:
        """Hand on what is queued on a pair now (before its tape is closed), and what is held back."""
        for p in (port, port + 1):
            entry = self._ports.get(p)
            if entry is not None and entry.sink is not None:
                self._read(entry, drain=True)
                if entry.held:
                    self._latch(entry)  # the advertised source never came: the held ones were the SRC's

    def close(self, port: int) -> None:
        """Stop receiving on a pair (``drain`` first to keep what is still queued)."""
        for p in (port, port + 1):
            entry = self._ports.pop(p, None)
            if entry is None:
                continue
            self._holding.discard(entry)
            fd = entry.sock.fileno()
            if self._by_fd.pop(fd, None) is not None:
                self._epoll.unregister(fd)
            entry.sock.close()

    def close_all(self) -> None:
        for port in [p for p in self._ports if not p & 1]:
            self.close(port)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._epoll.close()

    @property
    def open_ports(self) -> int:
        return len(self._ports)

    def poll(self) -> int:
        """Read every socket that has data now; returns how many sockets were read."""
        ready = self._epoll.poll(0, max(1, len(self._by_fd)))
        self._read_ready(ready)
        return len(ready)

    def _read_ready(self, ready: list[tuple[int, int]]) -> None:
        by_fd = self._by_fd
        for fd, _events in ready:
            entry = by_fd.get(fd)
            if entry is not None:
                self._read(entry)

    def _on_tick(self) -> None:
        self._timer = None
        if self._epoll.closed:
            return
        ready = self._epoll.poll(0, max(1, len(self._by_fd)))
        if self._holding:
            self._end_holds()
        self._next_slice(ready, 0)

    def _end_holds(self) -> None:
        """Latch the sockets whose hold is over even when their source has stopped sending."""
        now = time.time()
        for entry in [e for e in self._holding if e.hold_until <= now]:
            self._latch(entry)

    def _next_slice(self, ready: list[tuple[int, int]], start: int) -> None:
        # a tick reads thousands of sockets; between slices the loop answers SIP, so call set-up never
        # waits for a whole tick of media
        if self._epoll.closed:
            return
        try:
            self._read_ready(ready[start : start + SLICE_SOCKETS])
        finally:
            if start + SLICE_SOCKETS < len(ready):
                self._loop.call_soon(self._next_slice, ready, start + SLICE_SOCKETS)
            else:
                self._timer = self._loop.call_later(self._tick, self._on_tick)

    def _read(self, entry: _Port, drain: bool = False) -> None:
        sink, dst, dport = entry.sink, entry.dst, entry.port
        assert sink is not None
        batch = self._batch
        if batch is not None:
            fd = entry.sock.fileno()
            while True:
                truncated = batch.truncated
                got = batch.receive(fd)
                bad = other = 0
                want_addr, want_port = entry.want_addr, entry.want_port
                for ts, src, sport, payload in got:
                    if len(payload) < MIN_RTCP_BYTES or payload[0] & 0xC0 != RTP_VERSION_BITS:
                        bad += 1
                        continue
                    if sport != want_port or src != want_addr:
                        if not self._other(entry, ts or time.time(), src, sport, payload):
                            other += 1  # held back or foreign: counted there
                            continue
                        want_addr, want_port = entry.want_addr, entry.want_port
                    sink(ts or time.time(), src, sport, dst, dport, payload)
                self.received += len(got) - bad - other
                self.dropped += bad + batch.truncated - truncated
                # a full batch may have left more behind; otherwise the next tick will see the rest
                if len(got) < batch.vlen and not drain or not got:
                    return
        buf, view = self._buf, self._view
        while True:
            try:
                size, addr = entry.sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued on the socket; the next read goes on
            if size < MIN_RTCP_BYTES or buf[0] & 0xC0 != RTP_VERSION_BITS:
                self.dropped += 1
                continue
            src, ts = _pack_host(addr[0]), time.time()
            payload = view[:size].tobytes()
            if (addr[1] != entry.want_port or src != entry.want_addr) and not self._other(
                entry, ts, src, addr[1], payload
            ):
                continue
            self.received += 1
            sink(ts, src, addr[1], dst, dport, payload)

    # ---- the source filter (off the common path) --------------------------------------------------
    def _other(self, entry: _Port, ts: float, src: bytes, sport: int, payload: bytes) -> bool:
        """A datagram from a source other than the one ``entry`` takes now: whether to take it (False:
        held back, or dropped as foreign)."""
        if not entry.filtered:
            return True
        source = (src, sport)
        if source == entry.advertised:
            # the advertised source: it takes over from a latched or held-back one, for good
            if entry.latched is not None:
                was = entry.latched
                log.info("port %d: the SRC's advertised source %s:%d appeared: taken instead of %s:%d",
                         entry.port, format_addr(src), sport, format_addr(was[0]), was[1])  # fmt: skip
            self._foreign(entry, len(entry.held), entry.candidate)
            entry.held = []
            self._holding.discard(entry)
            entry.advertised_seen, entry.latched = True, None
            entry.want_addr, entry.want_port = source
            return True
        rtp = entry.rtp
        if rtp is not None:
            # RTCP: latched only to the address its RTP was latched to
            latched = rtp.latched
            if entry.latched is None and not entry.advertised_seen and latched is not None and src == latched[0]:
                entry.candidate = source
                self._latch(entry)
                return True
        elif not entry.advertised_seen and source not in entry.tainted:
            if ts < entry.opened_at:
                # sent before our answer named the port: not from this session's SRC
                if len(entry.tainted) < MAX_TAINTED:
                    entry.tainted.add(source)
            elif entry.candidate is None or entry.candidate == source:
                entry.candidate = source
                if ts < entry.hold_until and len(entry.held) < MAX_HELD:
                    entry.held.append((ts, src, sport, payload))
                    self._holding.add(entry)
                    return False
                self._latch(entry)
                return True
        self._foreign(entry, 1, source)
        return False

    def _latch(self, entry: _Port) -> None:
        """Take ``entry.candidate`` from now on, and write what was held back from it."""
        source = entry.candidate
        assert source is not None and entry.sink is not None
        if entry.latched != source:
            self.latches += 1
            log.info("port %d: the SRC sends from %s:%d, not from %s:%d as its SDP said: latched to it",
                     entry.port, format_addr(source[0]), source[1], _shown(entry.advertised[0]),
                     entry.advertised[1])  # fmt: skip
        entry.latched = source
        entry.want_addr, entry.want_port = source
        held, entry.held = entry.held, []
        self._holding.discard(entry)
        sink, dst, dport = entry.sink, entry.dst, entry.port
        for ts, src, sport, payload in held:
            sink(ts, src, sport, dst, dport, payload)
        self.received += len(held)

    def _foreign(self, entry: _Port, count: int, source: Source | None) -> None:
        if count:
            entry.foreign += count
            entry.foreign_from = source
            self.foreign += count


def _packed_or_nothing(host: str) -> bytes:
    """The packed form of an advertised address as ``recvmmsg`` gives sources (IPv4-mapped as IPv4);
    b"" (matching no source) for a host name or an unspecified address."""
    try:
        packed = _pack_host(host)
    except ParseError:
        return b""
    return b"" if not packed.strip(b"\x00") else packed


def _shown(packed: bytes) -> str:
    return format_addr(packed) if packed else "(no address)"


def _pack_host(host: str) -> bytes:
    host = host.split("%")[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return pack_addr(host)
