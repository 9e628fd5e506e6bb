"""Receiving live RTP/RTCP: one UDP socket per port, every datagram handed on with its arrival time.

This is the recorder's hot path (2000 calls are 200,000 packets a second), so a readable socket is
drained in one callback into a preallocated buffer, the sender's address is packed once and cached, and
the sink is a plain callable (the tape's ``write_packed``).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from callrec.capture.netparse import pack_addr

# (arrival time, src packed, src port, dst packed, dst port, payload)
MediaSink = Callable[[float, bytes, int, bytes, int, bytes], None]

RECV_BUFFER_BYTES = 1 << 20
MAX_DATAGRAM_BYTES = 65535
MIN_RTCP_BYTES = 8
RTP_VERSION_BITS = 0x80


class MediaReceiver:
    """Binds RTP/RTCP port pairs on one address and feeds what arrives to each pair's sink.

    A datagram that is not RTP or RTCP version 2 (too short, other version) never reaches a tape; it is
    dropped and counted in ``dropped``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, bind_host: str) -> None:
        self._loop = loop
        self._bind_host = bind_host
        self._family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self._sockets: dict[int, socket.socket] = {}
        self._buf = bytearray(MAX_DATAGRAM_BYTES)
        self._view = memoryview(self._buf)
        self._packed: dict[str, bytes] = {}
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
                sock.setblocking(False)
                sock.bind((self._bind_host, p))
        except OSError:
            for sock in opened:
                sock.close()
            raise
        for p, sock in zip((port, port + 1), opened, strict=True):
            self._sockets[p] = sock

    def start(self, port: int, advertised: str, sink: MediaSink) -> None:
        """Hand every datagram of a bound pair to ``sink``; ``advertised`` is the destination on the tape."""
        dst = pack_addr(advertised)
        for p in (port, port + 1):
            sock = self._sockets.get(p)
            if sock is not None:
                self._loop.add_reader(sock.fileno(), self._drain, sock, dst, p, sink)

    def close(self, port: int) -> None:
        """Stop receiving on a pair (``drain`` first to keep what is still queued)."""
        for p in (port, port + 1):
            sock = self._sockets.pop(p, None)
            if sock is None:
                continue
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def drain(self, port: int, sink: MediaSink, advertised: str) -> None:
        """Hand on what is queued on a pair now (before a tape is closed)."""
        dst = pack_addr(advertised)
        for p in (port, port + 1):
            sock = self._sockets.get(p)
            if sock is not None:
                self._drain(sock, dst, p, sink)

    def close_all(self) -> None:
        for port in [p for p in self._sockets if not p & 1]:
            self.close(port)

    @property
    def open_ports(self) -> int:
        return len(self._sockets)

    def _drain(self, sock: socket.socket, dst: bytes, dport: int, sink: MediaSink) -> None:
        buf, view, packed = self._buf, self._view, self._packed
        clock = time.time
        while True:
            try:
                size, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # an ICMP error queued on the socket; the next read goes on
                continue
            now = clock()
            if size < MIN_RTCP_BYTES or buf[0] & 0xC0 != RTP_VERSION_BITS:
                self.dropped += 1
                continue
            host = addr[0]
            src = packed.get(host)
            if src is None:
                src = packed[host] = _pack_host(host)
                if len(packed) > 4096:
                    packed.clear()
            self.received += 1
            sink(now, src, addr[1], dst, dport, view[:size].tobytes())


def _pack_host(host: str) -> bytes:
    host = host.split("%")[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return pack_addr(host)
