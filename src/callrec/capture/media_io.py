"""Receiving live RTP/RTCP: one UDP socket per port, every datagram handed on with its arrival time.

This is the recorder's hot path (2000 calls are 200,000 packets a second on one core), so sockets are
not read one event at a time. Every ``tick`` seconds one ``epoll`` call lists the sockets with data and
one ``recvmmsg`` call per socket takes its whole queue, each datagram stamped by the kernel on arrival
(see ``mmsg``). Where ``recvmmsg`` is missing the sockets are read one datagram at a time instead.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from callrec.capture import mmsg
from callrec.capture.netparse import pack_addr

# (arrival time, src packed, src port, dst packed, dst port, payload)
MediaSink = Callable[[float, bytes, int, bytes, int, bytes], None]

RECV_BUFFER_BYTES = 1 << 20
MAX_DATAGRAM_BYTES = 65535
MIN_RTCP_BYTES = 8
RTP_VERSION_BITS = 0x80
TICK_S = 0.1
SLICE_SOCKETS = 256
V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


@dataclass(slots=True)
class _Port:
    sock: socket.socket
    port: int
    dst: bytes = b""
    sink: MediaSink | None = None


class MediaReceiver:
    """Binds RTP/RTCP port pairs on one address and feeds what arrives to each pair's sink.

    A datagram that is not RTP or RTCP version 2 (too short, another version) never reaches a tape; it
    is dropped and counted in ``dropped``.
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
        for p, sock in zip((port, port + 1), opened, strict=True):
            self._ports[p] = _Port(sock, p)

    def start(self, port: int, advertised: str, sink: MediaSink) -> None:
        """Hand every datagram of a bound pair to ``sink``; ``advertised`` is the destination on the tape."""
        dst = pack_addr(advertised)
        for p in (port, port + 1):
            entry = self._ports.get(p)
            if entry is not None and entry.sink is None:
                entry.dst, entry.sink = dst, sink
                fd = entry.sock.fileno()
                self._by_fd[fd] = entry
                self._epoll.register(fd, select.EPOLLIN)

    def drain(self, port: int) -> None:
        """Hand on what is queued on a pair now (before its tape is closed)."""
        for p in (port, port + 1):
            entry = self._ports.get(p)
            if entry is not None and entry.sink is not None:
                self._read(entry, drain=True)

    def close(self, port: int) -> None:
        """Stop receiving on a pair (``drain`` first to keep what is still queued)."""
        for p in (port, port + 1):
            entry = self._ports.pop(p, None)
            if entry is None:
                continue
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
        self._next_slice(ready, 0)

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
                bad = 0
                for ts, src, sport, payload in got:
                    if len(payload) < MIN_RTCP_BYTES or payload[0] & 0xC0 != RTP_VERSION_BITS:
                        bad += 1
                        continue
                    sink(ts or time.time(), src, sport, dst, dport, payload)
                self.received += len(got) - bad
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
            self.received += 1
            src = _pack_host(addr[0])
            sink(time.time(), src, addr[1], dst, dport, view[:size].tobytes())


def _pack_host(host: str) -> bytes:
    host = host.split("%")[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return pack_addr(host)
