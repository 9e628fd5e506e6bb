"""SIP transports: UDP datagrams and TCP byte streams in, whole messages out, answers back the same way."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from callrec.errors import ParseError
from callrec.wire.sip import MAX_MESSAGE_BYTES, StreamFramer

log = logging.getLogger("callrec.sip")
PORT_ATTEMPTS = 20  # port 0: tries at a port free for both UDP and TCP
SIP_RECV_BUFFER_BYTES = 8 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass(slots=True)
class Origin:
    """Where a message came from and how to answer it (RFC 3261 section 18.2.2: to the source)."""

    transport: str  # "UDP" or "TCP"
    remote: tuple[str, int]
    local: tuple[str, int]
    send: Callable[[bytes], None]

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"


MessageHandler = Callable[[bytes, Origin], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, listener: SipListener) -> None:
        self._listener = listener
        self._transport: asyncio.DatagramTransport | None = None
        self._local: tuple[str, int] = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interfaces without subclassing them
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._local = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        transport = self._transport
        if transport is None:
            return
        remote = (str(addr[0]), int(addr[1]))

        def send(payload: bytes) -> None:
            transport.sendto(payload, addr)

        self._listener.deliver(data, Origin("UDP", remote, self._local, send))

    def error_received(self, exc: Exception) -> None:
        # an ICMP port-unreachable for an answer we sent: the SRC went away; nothing to do
        log.debug("UDP error: %s", exc)


class _Tcp(asyncio.Protocol):
    def __init__(self, listener: SipListener) -> None:
        self._listener = listener
        self._framer = StreamFramer(strict=True)
        self._unframed = 0  # bytes received since the last whole message
        self._origin: Origin | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")

        def send(payload: bytes) -> None:
            if not transport.is_closing():
                transport.write(payload)

        self._origin = Origin("TCP", (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1])), send)
        self._listener.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._listener.connections.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        assert self._origin is not None and self._transport is not None
        if self._transport.is_closing():
            return
        try:
            messages = self._framer.feed(data)
            self._unframed = 0 if messages else self._unframed + len(data)
            if self._unframed > MAX_MESSAGE_BYTES:
                raise ParseError("SIP stream carried 64 KiB without a whole message")
        except ParseError as exc:
            self._give_up(str(exc))
            return
        for message in messages:
            self._listener.deliver(message, self._origin)
            if not _framed_by_length(message):
                # its body (if any) was taken for the next message: the stream cannot be trusted any more
                self._give_up("SIP Content-Length is not a number")
                return

    def _give_up(self, why: str) -> None:
        assert self._origin is not None and self._transport is not None
        self._listener.dropped += 1
        log.warning("closing SIP/TCP connection from %s:%d: %s", *self._origin.remote, why)
        self._transport.close()


def _framed_by_length(message: bytes) -> bool:
    """False when a message's Content-Length is there but not a number (RFC 3261 section 18.3)."""
    for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l") and not value.strip().isdigit():
            return False
    return True


class SipListener:
    """Listens for SIP on one address over UDP and TCP and hands every message to ``handler``."""

    def __init__(self, handler: MessageHandler) -> None:
        self._handler = handler
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.connections: set[asyncio.Transport] = set()
        self.dropped = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind UDP and TCP; returns the bound address (port 0 picks a free port, the same for both)."""
        loop = asyncio.get_running_loop()
        for attempt in range(PORT_ATTEMPTS if port == 0 else 1):
            udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=_udp_socket(host, port))
            bound = udp.get_extra_info("sockname")
            try:
                self._tcp = await loop.create_server(lambda: _Tcp(self), host, bound[1], reuse_address=True)
            except OSError:
                udp.close()
                # the free UDP port the kernel picked is taken for TCP: pick another
                if attempt == PORT_ATTEMPTS - 1 or port != 0:
                    raise
                continue
            self._udp = udp
            return str(bound[0]), int(bound[1])
        raise AssertionError("unreachable")

    def sendto(self, payload: bytes, address: tuple[str, int]) -> None:
        """Send a request of our own over UDP, from the SIP socket, to an address other than a message's source."""
        if self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(payload, address)

    def deliver(self, data: bytes, origin: Origin) -> None:
        if len(data) > MAX_MESSAGE_BYTES or not data.strip():
            # keep-alive CRLFs (RFC 5626) and empty datagrams are not messages
            if data.strip():
                self.dropped += 1
            return
        self._handler(data, origin)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for transport in list(self.connections):
                transport.close()
            await self._tcp.wait_closed()


def _udp_socket(host: str, port: int) -> socket.socket:
    """The SIP UDP socket, with room for a burst of INVITEs (the default buffer holds about 45)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:  # past net.core.rmem_max where allowed (CAP_NET_ADMIN), else as much as it permits
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SIP_RECV_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SIP_RECV_BUFFER_BYTES)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
