"""A TCP proxy (on 127.0.0.1 unless told another address) that can break the connection to a server on
demand, for fault tests.

Modes (``proxy.mode = ...`` or ``set_mode``), switchable while clients are connected (a switch drops every
open connection, so a pooled keep-alive connection cannot slip past the new mode):

- ``"pass"``: forward both ways;
- ``"refuse"``: the listening socket is closed, so clients get "connection refused";
- ``"blackhole"``: connections are accepted and read, and never answered.

``corrupt_next_put_bodies(n)`` flips one byte in the middle of the body of the next ``n`` HTTP/1.1 PUT
requests (``Content-Length`` bodies; ``Expect: 100-continue`` works because the proxy only forwards).
``corrupted`` counts the bodies altered so far; ``requests`` lists each request forwarded as
``(method, target, headers)`` with lowercase header names, to check what a client sent.
Self-contained: no fixtures, only the standard library.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from types import TracebackType

HOST = "127.0.0.1"
MODES = ("pass", "refuse", "blackhole")
BUFFER_BYTES = 65536
MAX_HEAD_BYTES = 65536
ACCEPT_POLL_S = 0.02


class FaultProxy:
    """Listens on ``host:port`` (127.0.0.1 and a free port by default) and forwards to ``target_host:target_port``.

    ``host`` may be any local address, e.g. a bridge's, so that network namespaces on it reach the proxy.
    With ``http=False`` the bytes are forwarded as they come, without following HTTP requests (for
    PostgreSQL, Redis and other protocols; ``requests`` stays empty and nothing is corrupted).

    By default, when one side closes, both connections are reset at once, which drops whatever the
    proxy has sent but the other side has not read yet (a slow reader loses the end of a response).
    ``graceful_close=True`` passes the close on instead (FIN after every byte) and keeps the other
    direction open until it ends too; faults (modes, errors) still reset.
    """

    def __init__(
        self, target_host: str, target_port: int, port: int = 0, host: str = HOST, *, http: bool = True,
        graceful_close: bool = False,
    ) -> None:  # fmt: skip
        self.target = (target_host, target_port)
        self.host = host
        self.http = http
        self.graceful_close = graceful_close
        self.port = port
        self.corrupted = 0
        self.accepted = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._mode = "pass"
        self._corrupt_left = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._running = False
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.set_mode(mode)

    def start(self) -> FaultProxy:
        with self._lock:
            self._listen()
            self._running = True
        self._thread = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._close_listener()
            self._drop_all()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"fault proxy mode {mode!r} is not one of {', '.join(MODES)}")
        with self._lock:
            self._mode = mode
            self._drop_all()
            if mode == "refuse":
                self._close_listener()
            elif self._listener is None and self._running:
                self._listen()

    def corrupt_next_put_bodies(self, n: int = 1) -> None:
        with self._lock:
            self._corrupt_left += n

    def _take_corruption(self) -> bool:
        with self._lock:
            if self._corrupt_left <= 0:
                return False
            self._corrupt_left -= 1
            return True

    def _note_request(self, method: str, target: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append((method, target, headers))

    def _note_corrupted(self) -> None:
        with self._lock:
            self.corrupted += 1

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _drop_all(self) -> None:
        for sock in list(self._sockets):
            _abort(sock)
        self._sockets.clear()

    def _accept_loop(self) -> None:
        while self._running:
            listener = self._listener
            if listener is None:
                time.sleep(ACCEPT_POLL_S)
                continue
            try:
                select.select([listener], [], [], ACCEPT_POLL_S)
            except (OSError, ValueError):
                continue  # closed by set_mode meanwhile
            with self._lock:
                if listener is not self._listener:
                    continue
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, OSError):
                    continue
                conn.setblocking(True)
                self._sockets.add(conn)
                self.accepted += 1
                mode = self._mode
            threading.Thread(target=self._serve, args=(conn, mode), daemon=True).start()

    def _serve(self, conn: socket.socket, mode: str) -> None:
        if mode == "blackhole":
            _drain(conn)
            self._forget(conn)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5.0)
        except OSError:
            self._forget(conn)
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.add(upstream)
        flipper = _PutBodyFlipper(self) if self.http else None
        ended: list[socket.socket] = []  # the sources whose direction ended cleanly (graceful_close)
        threading.Thread(target=self._pump, args=(conn, upstream, flipper, ended), daemon=True).start()
        self._pump(upstream, conn, None, ended)

    def _pump(
        self, src: socket.socket, dst: socket.socket, flipper: _PutBodyFlipper | None,
        ended: list[socket.socket] | None = None,
    ) -> None:  # fmt: skip
        clean = False
        try:
            while data := src.recv(BUFFER_BYTES):
                dst.sendall(flipper.feed(data) if flipper else data)
            clean = self.graceful_close and ended is not None
            if clean:
                dst.shutdown(socket.SHUT_WR)  # the close goes on after every byte sent so far
        except OSError:
            clean = False
        finally:
            if clean and ended is not None and self._ended(ended, src):
                self._close(src)
                self._close(dst)
            elif not clean:
                self._forget(src)
                self._forget(dst)

    def _ended(self, ended: list[socket.socket], src: socket.socket) -> bool:
        """Note that ``src``'s direction ended cleanly; True once both directions have."""
        with self._lock:
            ended.append(src)
            return len(ended) == 2

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        _abort(sock)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class _PutBodyFlipper:
    """Follows the HTTP/1.1 requests on one connection and flips a byte in the PUT bodies it is told to."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.head = b""
        self.body_left = 0
        self.flip_at = -1
        self.raw = False  # a body we cannot delimit (chunked): forward the rest untouched

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        while data and not self.raw:
            if self.body_left:
                take, data = bytearray(data[: self.body_left]), data[self.body_left :]
                if 0 <= self.flip_at < len(take):
                    take[self.flip_at] ^= 0xFF
                    self.proxy._note_corrupted()
                    self.flip_at = -1
                elif self.flip_at >= 0:
                    self.flip_at -= len(take)
                self.body_left -= len(take)
                out += take
                continue
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                self.raw = len(self.head) > MAX_HEAD_BYTES
                data = self.head if self.raw else b""
                self.head = self.head if not self.raw else b""
                break
            head, data, self.head = self.head[: end + 4], self.head[end + 4 :], b""
            out += head
            self._start_request(head)
        return bytes(out + data) if self.raw else bytes(out)

    def _start_request(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        method = method.upper()
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        self.proxy._note_request(method, rest.rpartition(" ")[0], headers)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.raw = True
            return
        self.body_left = int(headers.get("content-length", "0") or 0)
        corrupt = method == "PUT" and self.body_left > 0 and self.proxy._take_corruption()
        self.flip_at = self.body_left // 2 if corrupt else -1


def _drain(conn: socket.socket) -> None:
    try:
        while conn.recv(BUFFER_BYTES):
            pass
    except OSError:
        pass


def _abort(sock: socket.socket) -> None:
    """Close with a reset (no lingering FIN handshake), waking any thread blocked reading it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
