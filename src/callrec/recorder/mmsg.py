"""``recvmmsg(2)`` through ctypes: every datagram queued on a socket, with its kernel arrival time, in one call.

Python's socket API costs two system calls per datagram on a readable socket (the read, then the read
that says "no more"), and the time taken after the read is late by however long the packet waited.
Here one call returns the whole queue, and ``SO_TIMESTAMPNS`` gives each datagram the time the kernel
received it, so reading can be batched (every few milliseconds) without blurring arrival times.
Linux only: ``available()`` says whether it can be used.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD: a struct timespec of 64-bit fields on 64-bit Linux
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
SOCKADDR_BYTES = 28  # sockaddr_in6, the larger of the two
CONTROL_BYTES = 64  # CMSG_SPACE(sizeof(struct timespec)) is 32
AF_INET_BE = socket.AF_INET << 8  # sa_family read as big-endian 16 bits (it is stored little-endian)
AF_INET6_BE = socket.AF_INET6 << 8


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


HDR_BYTES = ctypes.sizeof(_MMsgHdr)
# msg_controllen, msg_flags, msg_len at their offsets in struct mmsghdr
_TAIL = struct.Struct("=Qi4xI")
_TAIL_OFFSET = _MsgHdr.msg_controllen.offset
_CMSG = struct.Struct("=Qiiqq")  # cmsg_len, cmsg_level, cmsg_type, tv_sec, tv_nsec
_V4 = struct.Struct("!HH4s")
_V6 = struct.Struct("!HH4x16s")

_recvmmsg = None
if sys.platform.startswith("linux") and ctypes.sizeof(ctypes.c_void_p) == 8:
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _recvmmsg = _libc.recvmmsg
        _recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        _recvmmsg.restype = ctypes.c_int
    except (OSError, AttributeError):
        _recvmmsg = None


def available() -> bool:
    return _recvmmsg is not None


def enable_timestamps(sock: socket.socket) -> None:
    """Ask the kernel to stamp each datagram of ``sock`` with its arrival time."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


class BatchReceiver:
    """Reusable buffers for up to ``vlen`` datagrams of up to ``size`` bytes (longer ones are truncated)."""

    def __init__(self, vlen: int = 64, size: int = 4096) -> None:
        if _recvmmsg is None:
            raise OSError("recvmmsg is not available on this platform")
        self.vlen, self.size = vlen, size
        self._data = ctypes.create_string_buffer(vlen * size)
        self._names = ctypes.create_string_buffer(vlen * SOCKADDR_BYTES)
        self._control = ctypes.create_string_buffer(vlen * CONTROL_BYTES)
        self._iovs = (_IoVec * vlen)()
        self._hdrs = (_MMsgHdr * vlen)()
        data, names, control = (ctypes.addressof(b) for b in (self._data, self._names, self._control))
        for i in range(vlen):
            self._iovs[i].iov_base, self._iovs[i].iov_len = data + i * size, size
            hdr = self._hdrs[i].msg_hdr
            hdr.msg_name, hdr.msg_namelen = names + i * SOCKADDR_BYTES, SOCKADDR_BYTES
            hdr.msg_iov, hdr.msg_iovlen = ctypes.addressof(self._iovs[i]), 1
            hdr.msg_control, hdr.msg_controllen = control + i * CONTROL_BYTES, CONTROL_BYTES
        # the kernel overwrites name and control lengths: they are restored from this copy after each call
        self._pristine = bytes(memoryview(self._hdrs).cast("B"))
        self._hdr_view = memoryview(self._hdrs).cast("B")
        self._data_view = memoryview(self._data).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        self._control_view = memoryview(self._control).cast("B")
        self._hdrs_addr = ctypes.addressof(self._hdrs)
        self.truncated = 0  # datagrams longer than ``size``, left out

    def receive(self, fd: int) -> list[tuple[float, bytes, int, bytes]]:
        """Every datagram queued on ``fd`` (up to ``vlen``): (arrival, source packed, source port, payload).

        Truncated datagrams (longer than ``size``) are left out and counted in ``truncated``; an empty
        list when nothing is queued.
        """
        assert _recvmmsg is not None
        count = _recvmmsg(fd, self._hdrs_addr, self.vlen, MSG_DONTWAIT, None)
        if count <= 0:
            return []
        hdrs, data, names, control = self._hdr_view, self._data_view, self._names_view, self._control_view
        size, out = self.size, []
        tail, cmsg, v4, v6 = _TAIL.unpack_from, _CMSG.unpack_from, _V4.unpack_from, _V6.unpack_from
        for i in range(count):
            controllen, flags, length = tail(hdrs, i * HDR_BYTES + _TAIL_OFFSET)
            if flags & MSG_TRUNC:
                self.truncated += 1
                continue
            ts = 0.0
            if controllen >= _CMSG.size:
                _len, level, kind, sec, nsec = cmsg(control, i * CONTROL_BYTES)
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    ts = sec + nsec * 1e-9
            family, port, addr = v4(names, i * SOCKADDR_BYTES)
            if family == AF_INET6_BE:
                _, port, addr = v6(names, i * SOCKADDR_BYTES)
                if addr[:12] == b"\x00" * 10 + b"\xff\xff":
                    addr = addr[12:]
            start = i * size
            out.append((ts, addr, port, data[start : start + length].tobytes()))
        ctypes.memmove(self._hdrs_addr, self._pristine, count * HDR_BYTES)
        return out
