"""A capture filter expression (tcpdump's syntax) compiled to the classic BPF program the kernel runs.

libpcap compiles it, through ctypes (``pcap_open_dead`` + ``pcap_compile``: no device is opened, so no
privilege is needed); without libpcap, ``tcpdump -ddd`` does the same. An expression neither accepts
raises :class:`~callrec.config.ConfigError` with libpcap's own reason in one sentence.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import shutil
import struct
import subprocess

from callrec.config import ConfigError

# what an accepted packet keeps: all of it (libpcap's maximum snap length)
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
# one instruction: code (u16), jt (u8), jf (u8), k (u32): the same bytes as the kernel's struct sock_filter
INSN = struct.Struct("=HBBI")
TCPDUMP_TIMEOUT_S = 10.0
# DLT names tcpdump -y knows, by link type number
_DLT_NAMES = {1: "EN10MB", 12: "RAW", 101: "RAW", 113: "LINUX_SLL", 276: "LINUX_SLL2"}


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


@functools.cache
def _libpcap() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("pcap")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32,
    ]  # fmt: skip
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_freecode.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_close.restype = None
    return lib


def _bad(expression: str, reason: str) -> ConfigError:
    reason = " ".join(reason.split()).removeprefix("can't parse filter expression: ").rstrip(".")
    reason = reason or "it does not compile"
    return ConfigError(f"capture filter {expression!r} is not valid: {reason}.")


def _with_libpcap(lib: ctypes.CDLL, expression: str, linktype: int) -> bytes:
    handle = lib.pcap_open_dead(linktype, SNAPLEN)
    if not handle:
        raise ConfigError(f"libpcap cannot compile filters for link type {linktype}.")
    program = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, PCAP_NETMASK_UNKNOWN) != 0:
            raise _bad(expression, (lib.pcap_geterr(handle) or b"").decode(errors="replace"))
        try:
            return ctypes.string_at(program.bf_insns, program.bf_len * INSN.size)
        finally:
            lib.pcap_freecode(ctypes.byref(program))
    finally:
        lib.pcap_close(handle)


def _with_tcpdump(expression: str, linktype: int) -> bytes:
    tcpdump = shutil.which("tcpdump")
    dlt = _DLT_NAMES.get(linktype)
    if tcpdump is None or dlt is None:
        raise ConfigError("capture filters need libpcap or tcpdump, and neither is installed.")
    done = subprocess.run(
        [tcpdump, "-ddd", "-y", dlt, "-s", str(SNAPLEN), "--", expression],
        capture_output=True, text=True, timeout=TCPDUMP_TIMEOUT_S, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip() and not ln.startswith("Warning")]
        reason = lines[-1] if lines else f"tcpdump exited with {done.returncode}"
        raise _bad(expression, reason.removeprefix("tcpdump: "))
    numbers = [[int(v) for v in line.split()] for line in done.stdout.splitlines() if line.strip()]
    if not numbers or len(numbers) != numbers[0][0] + 1 or any(len(n) != 4 for n in numbers[1:]):
        raise _bad(expression, "tcpdump -ddd printed something other than a BPF program")
    return b"".join(INSN.pack(*n) for n in numbers[1:])


def compile_filter(expression: str, linktype: int = 1, *, use_libpcap: bool = True) -> bytes:
    """The BPF program for ``expression`` on frames of ``linktype``, as packed ``struct sock_filter``s.

    ``use_libpcap=False`` skips libpcap and asks tcpdump (the fallback, also used when libpcap is absent).
    """
    lib = _libpcap() if use_libpcap else None
    if lib is not None:
        return _with_libpcap(lib, expression, linktype)
    return _with_tcpdump(expression, linktype)


def instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    """The (code, jt, jf, k) instructions of a packed program (to show or compare programs)."""
    return [INSN.unpack_from(program, at) for at in range(0, len(program), INSN.size)]
